//! `testbed`: builds and removes namespace testbeds, runs the demo, and serves
//! HTTP on backends.
//!
//! - `testbed up [--clients N] [--backends N]`: build one and leave it running;
//! - `testbed down`: remove every testbed;
//! - `testbed demo`: the main job's embedded default (see README);
//! - `testbed serve`: internal, the backends' HTTP server.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use balancer_tests::{
    require_root, server,
    testbed::{Spec, Testbed},
};
use clap::{Parser, Subcommand};

mod demo;

#[derive(Parser)]
#[command(name = "testbed", about = "balancer namespace testbeds")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a testbed and leave it running.
    Up {
        /// Client namespaces.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Backend namespaces.
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// Remove every testbed.
    Down,
    /// Balance live traffic across a few backends and show the counters.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Serve the emulated inference backend (run inside a backend namespace).
    Serve {
        /// Name to answer with.
        #[arg(long)]
        name: String,
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Delay before answering `GET /`, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Emulator settings as JSON (see `server::EmulatorConfig`).
        #[arg(long)]
        emulator: Option<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            listen,
            delay_ms,
            emulator,
        } => {
            let mut cfg: server::EmulatorConfig = match emulator {
                Some(j) => serde_json::from_str(&j).context("--emulator JSON")?,
                None => server::EmulatorConfig::default(),
            };
            cfg.name = name;
            cfg.root_delay_ms = delay_ms;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(server::serve(listen, cfg))
        }
        Cmd::Up { clients, backends } => {
            require_root();
            let exe = std::env::current_exe().context("own path")?;
            let tb = Testbed::up(Spec::unique(clients, backends, exe))?;
            println!("testbed {} is up:", tb.spec.name);
            println!(
                "  gateway  {:<16} {} ({})",
                tb.gateway.ns, tb.gateway.addr, tb.gateway.mac
            );
            for h in tb.clients.iter().chain(&tb.backends) {
                println!("  {:<8} {:<16} {} ({})", h.name, h.ns, h.addr, h.mac);
            }
            println!("  VIP      {}", tb.vip());
            println!("remove it with `cargo xtask testbed down`");
            tb.persist();
            Ok(())
        }
        Cmd::Down => {
            require_root();
            Testbed::sweep();
            Ok(())
        }
        Cmd::Demo { seconds } => {
            require_root();
            demo::run(Duration::from_secs(seconds))
        }
    }
}
