//! Building this crate needs the `bpf-linker` binary, which cargo cannot express as
//! a dependency. Rebuild when it changes, and fail with a pointer to the fix.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found in PATH; run `cargo xtask setup` to install it"
        ),
    }
}
