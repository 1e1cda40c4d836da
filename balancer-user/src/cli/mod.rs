//! The command line. Local commands ([`args::LocalCmd`]: `run`, `detach`,
//! `agent`, `config check`) run here; daemon commands ([`args::DaemonCmd`])
//! talk to a running daemon through [`balancer::api::client`].

mod args;
mod local;
mod remote;
mod render;

use std::process::ExitCode;

use balancer::api::client::Client;
use clap::Parser;

use args::{Cli, Cmd};

/// Entry point: parses the command line, runs the command, and turns an error
/// into `error: …` on stderr and a failure exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Local(cmd) => local::run(cmd, cli.output),
        Cmd::Daemon(cmd) => remote::run(cmd, Client::new(&cli.socket), cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
