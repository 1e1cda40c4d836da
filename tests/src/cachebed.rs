//! Support for the cache suites and the proxy and invalidation benches:
//! emulated backends on loopback, a real `redis-server`, cache-only
//! `balancer run` gateways (alone or two on one Redis), and a small HTTP
//! client.
//!
//! Everything listens on 127.0.0.1 ports the OS hands out; nothing needs
//! root.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::{
    patience,
    server::{EmulatorConfig, serve_on},
};

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// An emulated inference backend on its own thread and runtime.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Backend {
    /// Starts one serving `models`, with decode `decode_ms` per token.
    pub fn start(name: &str, models: &[&str], decode_ms: f64) -> Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let cfg = EmulatorConfig {
            name: name.into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            slots: 256,
            decode_ms_per_token: decode_ms,
            ..Default::default()
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("backend runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let _ = serve_on(l, cfg).await;
            });
        });
        Ok(Self { addr })
    }

    /// Inference calls it has received.
    pub async fn calls(&self) -> Result<u64> {
        let r = http(self.addr, "GET", "/admin/stats", "", &[]).await?;
        let v: serde_json::Value = serde_json::from_str(&r.body)?;
        v.get("calls")
            .and_then(|c| c.as_u64())
            .context("no calls in /admin/stats")
    }

    /// Makes it answer 500 (or not).
    pub async fn fail(&self, fail: bool) -> Result<()> {
        let r = http(
            self.addr,
            "POST",
            "/admin/config",
            &format!("{{\"fail\": {fail}}}"),
            &[],
        )
        .await?;
        if r.status != 200 {
            bail!("admin/config: {}", r.status);
        }
        Ok(())
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The `x-cache` header.
    pub fn cache(&self) -> &str {
        self.header("x-cache")
    }
}

thread_local! {
    static CLIENT: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
}

/// One HTTP/1.1 request over a pooled keep-alive connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let client = CLIENT.with(|c| c.clone());
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string())))?;
    let limit = patience(Duration::from_secs(30));
    let resp = tokio::time::timeout(limit, client.request(req))
        .await
        .with_context(|| format!("no response within {limit:?}"))?
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// `$BALANCER_REDIS_SERVER`, else the first `redis-server` installed in the
/// usual places.
fn redis_server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BALANCER_REDIS_SERVER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A `redis-server` on a loopback port, without persistence.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one and waits until it answers.
    pub fn start() -> Result<Self> {
        let mut r = Self {
            port: free_port()?,
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: it persists nothing).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let bin = redis_server_bin().context(
            "redis-server is not installed: the cache suites need it \
             (apt-get install redis-server; `cargo xtask setup` does) or set \
             BALANCER_REDIS_SERVER",
        )?;
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + patience(Duration::from_secs(10));
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|r| r == "PONG") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer on port {}", self.port)
    }

    /// Sends one inline command (e.g. `ACL SETUSER a off`) on a new
    /// connection and returns the reply: a status, integer or bulk string's
    /// text, empty for a null bulk string (errors are `Err`; arrays are not
    /// supported).
    pub fn command(&self, cmd: &str) -> Result<String> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(patience(Duration::from_secs(2))))?;
        s.write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix('+').or_else(|| line.strip_prefix(':')) {
            Ok(rest.to_string())
        } else if let Some(rest) = line.strip_prefix('-') {
            bail!("redis: {cmd}: {rest}")
        } else if line == "$-1" {
            Ok(String::new())
        } else if let Some(rest) = line.strip_prefix('$') {
            let n: usize = rest.parse().context("bulk length")?;
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)?;
            body.truncate(n);
            Ok(String::from_utf8_lossy(&body).into_owned())
        } else {
            bail!("redis: {cmd}: unexpected reply {line:?}")
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cache-only `balancer run`.
pub struct Gateway {
    /// Its working directory (config, socket, state, log).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    /// Starts a daemon with `config` (its `[daemon]` table is added here),
    /// without a metrics endpoint.
    pub fn start(name: &str, config: &str) -> Result<Self> {
        Self::launch(name, config, "")
    }

    /// Starts a daemon with `config` that serves Prometheus metrics on
    /// `127.0.0.1:metrics_port`.
    pub fn start_with_metrics(name: &str, config: &str, metrics_port: u16) -> Result<Self> {
        Self::launch(name, config, &format!("127.0.0.1:{metrics_port}"))
    }

    fn launch(name: &str, config: &str, metrics: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "balancer-cache-{name}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let full = format!(
            "[daemon]\nsocket = \"{}\"\nstate_file = \"{}\"\nmetrics = \"{metrics}\"\n\n{config}",
            dir.join("api.sock").display(),
            dir.join("state.json").display()
        );
        let path = dir.join("balancer.toml");
        std::fs::write(&path, full)?;
        let child = crate::testbed::spawn_daemon(&path, &dir.join("daemon.log"))?;
        let mut g = Self {
            dir,
            child: Some(child),
        };
        g.wait_ready()?;
        Ok(g)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// An admin API client.
    pub fn client(&self) -> balancer::api::client::Client {
        balancer::api::client::Client::new(self.dir.join("api.sock"))
    }

    fn wait_ready(&mut self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = self.client();
        let deadline = Instant::now() + patience(Duration::from_secs(20));
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Some(status) = c.try_wait()?
            {
                bail!("balancer run exited ({status}); log:\n{}", self.log());
            }
            match rt.block_on(client.status()) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("gateway not ready ({last}); log:\n{}", self.log())
    }

    /// Runs the `balancer` CLI against this daemon; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        crate::testbed::balancer_cli(&self.dir.join("api.sock"), args)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("gateway log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

/// A `[[route]]` table: route `name` on `127.0.0.1:port` in front of
/// `backend`, with `extra` lines.
pub fn route_toml(name: &str, port: u16, backend: &Backend, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [\"{}\"]\n{extra}\n",
        backend.addr
    )
}

impl Redis {
    /// A `[cache]` table with this Redis as the L2: 200 ms per command,
    /// longer on slow machines (at most the 10 s the daemon accepts), and a
    /// prefix of its own.
    pub fn cache_toml(&self) -> String {
        let timeout_ms = patience(Duration::from_millis(200)).as_millis().min(10_000);
        format!(
            "[cache]\nredis = \"{}\"\nredis_timeout_ms = {timeout_ms}\nredis_prefix = \"t{}\"\n\n",
            self.url(),
            self.port
        )
    }

    /// Keys in Redis (entries and version tokens).
    pub fn dbsize(&self) -> Result<u64> {
        let n = self.command("DBSIZE")?;
        n.trim()
            .parse()
            .with_context(|| format!("DBSIZE answered {n:?}"))
    }

    /// Waits until Redis holds more than `before` keys: a miss is written to
    /// the L2 in the background, after the response. `who` names the writer
    /// in the error.
    pub async fn wait_write(&self, before: u64, who: &str) -> Result<()> {
        let deadline = Instant::now() + patience(Duration::from_secs(5));
        loop {
            let n = self.dbsize()?;
            if n > before {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{who} never wrote to Redis ({n} keys)");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Gateway {
    /// Waits until the gateway's L2 is up (or down).
    pub async fn wait_l2(&self, up: bool) -> Result<()> {
        let deadline = Instant::now() + patience(Duration::from_secs(15));
        loop {
            let s = self.client().cache_stats().await?;
            if s.l2.as_ref().map(|l| l.up) == Some(up) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("L2 never became up={up}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Invalidates `model`'s entries whose prompt starts with `prefix`.
    pub async fn invalidate_prefix(
        &self,
        model: &str,
        prefix: &str,
    ) -> Result<balancer::cache::InvalidateReply> {
        Ok(self
            .client()
            .cache_invalidate(&balancer::api::InvalidateBody {
                model: model.into(),
                key: None,
                prefix: Some(prefix.into()),
            })
            .await?)
    }
}

/// Two gateways sharing one Redis, each serving route `r` in front of the
/// same backend, with their L2s up.
pub struct GatewayPair {
    /// Gateway A.
    pub a: Gateway,
    /// A's route port.
    pub pa: u16,
    /// Gateway B.
    pub b: Gateway,
    /// B's route port.
    pub pb: u16,
}

impl GatewayPair {
    /// Starts both (named `<name>a` and `<name>b`) and waits for their L2s.
    /// Not from inside a runtime: it runs its own, as [`Gateway::start`]
    /// does.
    pub fn start(name: &str, redis: &Redis, backend: &Backend) -> Result<Self> {
        let (pa, pb) = (free_port()?, free_port()?);
        let cfg = |port| redis.cache_toml() + &route_toml("r", port, backend, "");
        let a = Gateway::start(&format!("{name}a"), &cfg(pa))?;
        let b = Gateway::start(&format!("{name}b"), &cfg(pb))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            a.wait_l2(true).await?;
            b.wait_l2(true).await
        })?;
        Ok(Self { a, pa, b, pb })
    }
}
