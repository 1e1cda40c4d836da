//! The testbed's backend servers: started (the test server or a command
//! such as `balancer emulate`), waited for, stopped and reconfigured.

use std::{
    net::SocketAddr,
    process::{Child, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{Testbed, VIP, VIP_PORT};
use crate::{
    netns::{self, command_in, ip},
    patience,
};

impl Testbed {
    /// Waits until every backend's server answers locally; an error shows
    /// the end of a command's log.
    pub(super) fn wait_serving(&self) -> Result<()> {
        for b in &self.backends {
            let addr = SocketAddr::from((VIP, VIP_PORT));
            let ok = netns::run_in(&b.ns, move || {
                let deadline =
                    std::time::Instant::now() + patience(std::time::Duration::from_secs(10));
                while std::time::Instant::now() < deadline {
                    let attempt = patience(std::time::Duration::from_millis(100));
                    if std::net::TcpStream::connect_timeout(&addr, attempt).is_ok() {
                        return true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                false
            })?;
            if !ok {
                let log = std::fs::read_to_string(self.dir().join(format!("{}.log", b.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                if tail.is_empty() {
                    bail!("backend {} did not start serving", b.name);
                }
                bail!(
                    "backend {} did not start serving; its log ends:\n{}",
                    b.name,
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// (Re)starts backend `i`'s HTTP server, answering `GET /` after `delay`.
    pub fn start_server(&mut self, i: usize, delay: std::time::Duration) -> Result<()> {
        self.stop_server(i);
        let b = self.backends.get(i).context("no such backend")?.clone();
        if let Some(cmds) = &self.spec.backend_commands {
            let argv = cmds.get(i).context("no command for this backend")?;
            let (program, args) = argv.split_first().context("an empty backend command")?;
            // Its log goes beside the daemon's, not over the caller's output.
            std::fs::create_dir_all(self.dir())?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir().join(format!("{}.log", b.name)))?;
            let child = command_in(&b.ns, program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {program} on {}", b.name))?;
            self.keep_server(i, child);
            return Ok(());
        }
        let emulator = serde_json::to_string(&self.spec.emulator)?;
        let child = command_in(&b.ns, &self.spec.server_bin.to_string_lossy())
            // Any address: the VIP (tunnelled traffic) and the backend's own
            // (direct traffic, e.g. from a proxy) alike.
            .args([
                "serve",
                "--name",
                &b.name,
                "--listen",
                &format!("0.0.0.0:{VIP_PORT}"),
            ])
            .args(["--delay-ms", &delay.as_millis().to_string()])
            .args(["--emulator", &emulator])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a backend server")?;
        self.keep_server(i, child);
        Ok(())
    }

    fn keep_server(&mut self, i: usize, child: Child) {
        if self.servers.len() <= i {
            self.servers.resize_with(i + 1, || None);
        }
        self.servers[i] = Some(child);
    }

    /// Stops backend `i`'s server (it stops answering; connections are refused).
    pub fn stop_server(&mut self, i: usize) {
        if let Some(Some(mut c)) = self.servers.get_mut(i).map(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `ip netns exec` may leave the server itself behind its shell.
        if let Some(b) = self.backends.get(i)
            && let Ok(out) = ip(&["netns", "pids", &b.ns])
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    /// Changes backend `i`'s emulator at run time (speed, queue, failures).
    pub fn emulator_admin(&self, i: usize, change: &crate::server::AdminConfig) -> Result<()> {
        let b = self.backends.get(i).context("no such backend")?;
        let target = SocketAddr::from((b.addr, VIP_PORT));
        let body = serde_json::to_string(change)?;
        let ns = self.gateway.ns.clone();
        netns::run_in(&ns, move || -> Result<()> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(
                &target,
                patience(std::time::Duration::from_secs(2)),
            )?;
            write!(
                s,
                "POST /admin/config HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            if !out.starts_with("HTTP/1.1 200") {
                bail!("emulator admin refused: {out}");
            }
            Ok(())
        })?
    }
}
