//! `balancer stats`: a frame every interval until Ctrl-C, or one with `--once`.

use std::{
    future::Future,
    io::Write,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use balancer::api::{StatsReply, client::Client};

use crate::cli::{args::Output, render};

/// Prints stats from the daemon: live, or once with `once`.
pub async fn stats(client: &Client, output: Output, interval: f64, once: bool) -> Result<()> {
    let fetch = || async { client.stats().await.context("reading stats") };
    draw(fetch, output, Duration::from_secs_f64(interval), once).await
}

async fn draw<F, Fut>(mut fetch: F, output: Output, interval: Duration, once: bool) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StatsReply>>,
{
    let mut prev: Option<StatsReply> = None;
    let started = Instant::now();
    loop {
        let cur = fetch().await?;
        if once && prev.is_none() && output == Output::Table {
            // One interval to measure rates over.
            prev = Some(cur);
            tokio::time::sleep(interval).await;
            continue;
        }
        match output {
            Output::Json => println!("{}", serde_json::to_string(&cur)?),
            Output::Table => {
                let mode = if once {
                    render::stats::Mode::Once
                } else {
                    render::stats::Mode::Live {
                        interval,
                        elapsed: started.elapsed(),
                    }
                };
                let out = render::stats::frame(prev.as_ref(), &cur, mode);
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(out.as_bytes())?;
                stdout.flush()?;
            }
        }
        if once {
            return Ok(());
        }
        prev = Some(cur);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
