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
    let interval = Duration::from_secs_f64(interval);
    if once {
        // One frame: Ctrl-C keeps its default meaning (the process ends).
        return frames(fetch, output, interval, true, std::future::pending()).await;
    }
    let ctrl_c = async {
        // An error installing the handler ends the loop too, as it always did.
        let _ = tokio::signal::ctrl_c().await;
    };
    frames(fetch, output, interval, false, ctrl_c).await
}

/// Prints frames until `stop` resolves (then returns `Ok`), an error, or the
/// one frame of `once`.
///
/// `stop` is one future for the whole loop: a fresh `ctrl_c()` per sleep
/// would miss a Ctrl-C pressed while a frame is fetched or drawn, and since
/// tokio has replaced the default handler by then, the key would do nothing.
async fn frames<F, Fut>(
    fetch: F,
    output: Output,
    interval: Duration,
    once: bool,
    stop: impl Future<Output = ()>,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<StatsReply>>,
{
    tokio::select! {
        r = draw(fetch, output, interval, once) => r,
        () = stop => Ok(()),
    }
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
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        collections::BTreeMap,
        future::{pending, ready},
    };

    use super::*;

    fn empty() -> StatsReply {
        StatsReply {
            at_ms: 0,
            global: BTreeMap::new(),
            vips: vec![],
            cache: None,
            routes: Vec::new(),
        }
    }

    /// Fails the test instead of hanging when `f` does not finish.
    async fn within<T>(f: impl Future<Output = T>) -> T {
        match tokio::time::timeout(Duration::from_secs(10), f).await {
            Ok(v) => v,
            Err(_) => panic!("the stats loop did not stop"),
        }
    }

    #[tokio::test]
    async fn stop_while_fetching_ends_the_loop() {
        // The daemon never answers; the stop must still be seen.
        let fetch = || pending::<Result<StatsReply>>();
        let r = within(frames(
            fetch,
            Output::Json,
            Duration::from_secs(1),
            false,
            ready(()),
        ))
        .await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn stop_while_sleeping_ends_the_loop() {
        let calls = Cell::new(0);
        let fetch = || {
            calls.set(calls.get() + 1);
            ready(Ok(empty()))
        };
        let stop = tokio::time::sleep(Duration::from_millis(50));
        let r = within(frames(
            fetch,
            Output::Json,
            Duration::from_secs(3600),
            false,
            stop,
        ))
        .await;
        assert!(r.is_ok());
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn fetch_errors_end_the_loop() {
        let fetch = || ready(Err(anyhow::anyhow!("daemon gone")));
        let r = within(frames(
            fetch,
            Output::Json,
            Duration::from_secs(1),
            false,
            pending(),
        ))
        .await;
        assert!(r.is_err());
    }
}
