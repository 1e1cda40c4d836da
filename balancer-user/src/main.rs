//! `balancer`: the gateway daemon (`balancer run`) and its CLI, a thin client
//! of the daemon's admin API.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
