//! Commands that talk to a running daemon through [`Client`].

mod stats;

use anyhow::{Result, bail};
use balancer::{
    api::{AddBackend, InvalidateBody, client::Client},
    lb::VipSpec,
};
use serde::Serialize;

use super::{
    args::{BackendCmd, CacheCmd, DaemonCmd, Output, RouteCmd, VipCmd},
    render,
};

/// Runs a daemon command on a small single-threaded runtime.
pub fn run(cmd: DaemonCmd, client: Client, output: Output) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            DaemonCmd::Vip(c) => vip(c, &client, output).await,
            DaemonCmd::Backend(c) => backend(c, &client, output).await,
            DaemonCmd::Status => {
                let s = client.status().await?;
                show(output, &s, render::status::status)
            }
            DaemonCmd::Stats { interval, once } => {
                stats::stats(&client, output, interval, once).await
            }
            DaemonCmd::Weights { explain } => {
                let w = client.weights().await?;
                show(output, &w, |w| render::weights::weights(w, explain))
            }
            DaemonCmd::Cache(c) => cache(c, &client, output).await,
            DaemonCmd::Route(RouteCmd::Stats) => {
                let s = client.stats().await?;
                show(output, &s.routes, |r| render::routes::stats(r))
            }
            DaemonCmd::Route(RouteCmd::Explain { route }) => {
                let mut rows = client.stats().await?.routes;
                if let Some(name) = &route {
                    rows.retain(|r| &r.route == name);
                    anyhow::ensure!(!rows.is_empty(), "no route named {name:?}");
                }
                show(output, &rows, |r| render::routes::explain(r))
            }
        }
    })
}

/// Prints `v` as pretty JSON, or its table view.
fn show<T: Serialize>(output: Output, v: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    match output {
        Output::Json => print_json(v),
        Output::Table => {
            print!("{}", table(v));
            Ok(())
        }
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Confirms a change: `{"ok": true}` for scripts, `what` for people.
fn done(output: Output, what: String) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::json!({"ok": true})),
        Output::Table => println!("{what}"),
    }
    Ok(())
}

async fn vip(cmd: VipCmd, client: &Client, output: Output) -> Result<()> {
    match cmd {
        VipCmd::Add {
            vip,
            mode,
            affinity,
            tier,
            refuse,
        } => {
            let spec = VipSpec {
                id: vip,
                mode,
                affinity_secs: affinity,
                refuse,
                tier,
            };
            client.add_vip(&spec).await?;
            done(output, format!("added VIP {vip}"))
        }
        VipCmd::Set {
            vip,
            tier,
            shed,
            refuse,
        } => {
            anyhow::ensure!(
                tier.is_some() || shed.is_some() || refuse.is_some(),
                "give --tier, --shed, --refuse or several"
            );
            let set = balancer::api::VipSet {
                tier,
                shed_percent: shed,
                refuse,
            };
            client.set_vip(&vip, &set).await?;
            let mut what = Vec::new();
            if let Some(t) = tier {
                what.push(format!("tier {t}"));
            }
            if let Some(p) = shed {
                what.push(format!("refusing {p}% of new connections"));
            }
            if let Some(r) = refuse {
                what.push(format!("refusing by {}", r.label()));
            }
            done(output, format!("{vip}: {}", what.join(", ")))
        }
        VipCmd::Rm { vip } => {
            client.remove_vip(&vip).await?;
            done(output, format!("removed VIP {vip}"))
        }
        VipCmd::List => {
            let vips = client.vips().await?;
            show(output, &vips, |v| render::vips::vips(v))
        }
    }
}

async fn backend(cmd: BackendCmd, client: &Client, output: Output) -> Result<()> {
    match cmd {
        BackendCmd::Add {
            vip,
            addr,
            weight,
            mac,
        } => {
            client
                .add_backend(&vip, &AddBackend { addr, weight, mac })
                .await?;
            done(output, format!("added {addr} (weight {weight}) to {vip}"))
        }
        BackendCmd::Rm { vip, addr } => {
            client.remove_backend(&vip, addr).await?;
            done(output, format!("removed {addr} from {vip}"))
        }
        BackendCmd::Drain { vip, addr } => {
            client.drain(&vip, addr, true).await?;
            done(
                output,
                format!(
                    "draining {addr} in {vip}: established connections stay, new ones go elsewhere"
                ),
            )
        }
        BackendCmd::Undrain { vip, addr } => {
            client.drain(&vip, addr, false).await?;
            done(
                output,
                format!("{addr} in {vip} takes new connections again"),
            )
        }
        BackendCmd::SetWeight { vip, addr, weight } => {
            client.set_weight(&vip, addr, weight).await?;
            done(output, format!("{addr} in {vip}: weight {weight}"))
        }
        BackendCmd::List { vip } => {
            let mut vips = client.vips().await?;
            if let Some(v) = vip {
                vips.retain(|x| x.spec.id == v);
                if vips.is_empty() {
                    bail!("no VIP {v}; `balancer vip list` shows the configured ones");
                }
            }
            show(output, &vips, |v| render::backends::backends(v))
        }
    }
}

async fn cache(cmd: CacheCmd, client: &Client, output: Output) -> Result<()> {
    match cmd {
        CacheCmd::Stats => {
            let s = client.cache_stats().await?;
            show(output, &s, render::cache::stats)
        }
        CacheCmd::Invalidate { model, key, prefix } => {
            let body = InvalidateBody { model, key, prefix };
            let r = client.cache_invalidate(&body).await?;
            show(output, &r, |r| {
                format!("{}\n", render::cache::invalidated(r))
            })
        }
        CacheCmd::BumpVersion { model } => {
            let r = client.cache_bump(&model).await?;
            show(output, &r, |r| {
                format!("{}\n", render::cache::bumped(&model, r))
            })
        }
    }
}
