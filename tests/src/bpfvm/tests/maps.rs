//! Map helpers on hand-assembled programs: the run's local copies.

use super::{ADD, Asm, B, DW, JEQ, JNE, SUB, W, def, with_map};
use crate::bpfvm::{EmptyMaps, Fault, MapBackend, VmError, exec};

const HASH: u32 = 1;
const ARRAY: u32 = 2;

/// `r1 = map; r2 = &key` with the u32 `key` stored at r10 - 4.
fn map_and_key(a: Asm, key: i32) -> Asm {
    a.ld64(1, 0)
        .st(W, 10, -4, key)
        .movr(2, 10)
        .alu64(ADD, 2, -4)
}

/// Looks up `key`; exits with r0 = 0 on a miss, else leaves the value's
/// address in r0.
fn lookup(a: Asm, key: i32) -> Asm {
    map_and_key(a, key).call(1).jmp(JNE, 0, 0, 1).exit()
}

fn r0(prog: &crate::bpfvm::Program, maps: &mut dyn MapBackend) -> Result<u64, VmError> {
    exec::run(prog, &[0; 14], maps, 100_000).map(|(r0, _)| r0)
}

#[test]
fn repeated_lookups_share_one_local_copy() {
    // Write 42 through the first pointer, look up again: same pointer, 42.
    let a = lookup(Asm::default(), 3).movr(6, 0).st(DW, 6, 0, 42);
    let a = lookup(a, 3)
        .movr(7, 0)
        .alu64r(SUB, 7, 6)
        .jmp(JEQ, 7, 0, 2)
        .mov(0, -1)
        .exit()
        .ldx(DW, 0, 0, 0)
        .exit();
    let prog = with_map(&a, def("H", HASH, 4, 8, 16));
    let mut calls = Vec::new();
    let mut backend = |map: &str, key: &[u8]| {
        calls.push((map.to_string(), key.to_vec()));
        Some(vec![7u8; 8])
    };
    assert_eq!(r0(&prog, &mut backend).unwrap(), 42);
    assert_eq!(calls, vec![("H".to_string(), 3u32.to_le_bytes().to_vec())]);
    // The write stayed in the run: a new run starts from the backend's value.
    let a = lookup(Asm::default(), 3).ldx(DW, 0, 0, 0).exit();
    let prog = with_map(&a, def("H", HASH, 4, 8, 16));
    let mut backend = |_: &str, _: &[u8]| Some(vec![7u8; 8]);
    assert_eq!(r0(&prog, &mut backend).unwrap(), 0x0707_0707_0707_0707);
}

#[test]
fn hash_update_and_delete_stay_local() {
    // update(key 5, value at r10-16 = 99, flags) then lookup → 99.
    let update = |a: Asm, flags: i32| {
        map_and_key(a, 5)
            .st(DW, 10, -16, 99)
            .movr(3, 10)
            .alu64(ADD, 3, -16)
            .mov(4, flags)
            .call(2)
    };
    let del = |a: Asm| map_and_key(a, 5).call(3);
    let h = || def("H", HASH, 4, 8, 16);
    let cases: Vec<(&str, Asm, u64)> = vec![
        (
            "insert then read",
            lookup(update(Asm::default(), 0), 5).ldx(DW, 0, 0, 0).exit(),
            99,
        ),
        (
            "EXIST on absent",
            update(Asm::default(), 2).exit(),
            (-2i64) as u64,
        ),
        ("NOEXIST on absent", update(Asm::default(), 1).exit(), 0),
        (
            "NOEXIST on present",
            update(update(Asm::default(), 0), 1).exit(),
            (-17i64) as u64,
        ),
        ("delete absent", del(Asm::default()).exit(), (-2i64) as u64),
        (
            "delete then miss",
            lookup(del(update(Asm::default(), 0)), 5).mov(0, 1).exit(),
            0,
        ),
    ];
    for (name, a, want) in cases {
        assert_eq!(
            r0(&with_map(&a, h()), &mut EmptyMaps).unwrap(),
            want,
            "{name}"
        );
    }
}

#[test]
fn arrays_are_never_missing_below_max_entries() {
    let arr = || def("A", ARRAY, 4, 4, 4);
    // Index 3 reads as zeros with an empty backend; 4 is past the end.
    let a = lookup(Asm::default(), 3)
        .ldx(W, 0, 0, 0)
        .alu64(ADD, 0, 1)
        .exit();
    assert_eq!(r0(&with_map(&a, arr()), &mut EmptyMaps).unwrap(), 1);
    let a = lookup(Asm::default(), 4).mov(0, 1).exit();
    assert_eq!(r0(&with_map(&a, arr()), &mut EmptyMaps).unwrap(), 0);
    // Update past the end: -E2BIG; delete: -EINVAL.
    let a = map_and_key(Asm::default(), 4)
        .movr(3, 2)
        .mov(4, 0)
        .call(2)
        .exit();
    assert_eq!(
        r0(&with_map(&a, arr()), &mut EmptyMaps).unwrap(),
        (-7i64) as u64
    );
    let a = map_and_key(Asm::default(), 0).call(3).exit();
    assert_eq!(
        r0(&with_map(&a, arr()), &mut EmptyMaps).unwrap(),
        (-22i64) as u64
    );
    // A value of the wrong size from the backend is an error.
    let a = lookup(Asm::default(), 0).exit();
    let mut short = |_: &str, _: &[u8]| Some(vec![0u8; 3]);
    let err = r0(&with_map(&a, arr()), &mut short).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::ValueSize {
                expected: 4,
                got: 3,
                ..
            }
        ),
        "{err}"
    );
    // Values are bounded by their size.
    let a = lookup(Asm::default(), 0).ldx(B, 0, 0, 4).exit();
    let err = r0(&with_map(&a, arr()), &mut EmptyMaps).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Access {
                fault: Fault::OutOfBounds { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn map_handles_are_not_memory_and_scalars_are_not_maps() {
    let a = Asm::default().ld64(1, 0).ldx(B, 0, 1, 0).exit();
    let err = r0(&with_map(&a, def("H", HASH, 4, 8, 1)), &mut EmptyMaps).unwrap_err();
    assert!(matches!(err, VmError::Access { .. }), "{err}");
    let a = Asm::default()
        .ld64(3, 0)
        .mov(1, 8)
        .movr(2, 10)
        .call(1)
        .exit();
    let err = r0(&with_map(&a, def("H", HASH, 4, 8, 1)), &mut EmptyMaps).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::NotAMap {
                helper: 1,
                value: 8,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_map_without_layout_must_be_given_one() {
    // As a map from `.maps` (BTF) is loaded: known by name, sizes unknown.
    let a = lookup(Asm::default(), 1).ldx(W, 0, 0, 0).exit();
    let mut p = with_map(&a, def("BTF_MAP", 0, 0, 0, 0));
    let err = r0(&p, &mut EmptyMaps).unwrap_err();
    assert!(matches!(err, VmError::Malformed(_)), "{err}");
    p.set_map_layout("BTF_MAP", ARRAY, 4, 4, 2).unwrap();
    let mut one = |_: &str, _: &[u8]| Some(7u32.to_le_bytes().to_vec());
    assert_eq!(r0(&p, &mut one).unwrap(), 7);
    assert!(matches!(
        p.set_map_layout("NOPE", ARRAY, 4, 4, 1),
        Err(VmError::NoMap(_))
    ));
}
