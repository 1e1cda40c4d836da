//! An emulated fleet in this process behind a real gateway (`balancer run`)
//! with one `[[route]]`: what the routing integration tests stand on.

use std::net::SocketAddr;

use anyhow::Result;
use balancer::emulate::profile::Profile;

use super::{run::start_nodes, scenario::Fleet};
use crate::cachebed::{Gateway, free_port};

/// The bench's profile (`profiles/llama-3.1-8b.toml` of
/// [`crate::scenarios_dir`], which the VM suite places in its guest too).
pub fn profile() -> Result<Profile> {
    let dir = crate::scenarios_dir().join("profiles");
    Ok(Profile::load(&dir.join("llama-3.1-8b.toml"))?)
}

/// Nodes of `classes` (class, count) of the bench's profile, serving
/// `llama-3.1-8b`, and a gateway in front of them with a route `name` of
/// `settings` (TOML lines of the `[[route]]` table); returns the gateway,
/// the route's address and each node's address and name.
pub async fn start(
    name: &str,
    classes: &[(&str, u32)],
    settings: &str,
) -> Result<(Gateway, SocketAddr, Vec<(SocketAddr, String)>)> {
    let fleet = Fleet {
        profile: profile()?,
        profile_path: None,
        model: "llama-3.1-8b".into(),
        nodes: classes.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
    };
    let nodes = start_nodes(&fleet, &[]).await?;
    let port = free_port()?;
    let list: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.0)).collect();
    let config = format!(
        "[[route]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nbackends = [{}]\ncache = false\ntimeout_ms = 120000\n{settings}",
        list.join(", ")
    );
    let g = tokio::task::spawn_blocking({
        let name = name.to_string();
        move || Gateway::start(&name, &config)
    })
    .await??;
    let names = nodes.into_iter().map(|(a, n, _)| (a, n)).collect();
    Ok((g, SocketAddr::from(([127, 0, 0, 1], port)), names))
}
