//! What the proxy's tests share: a route's test configuration, and a route
//! served on a loopback port the kernel picks.

use super::*;
use crate::cache::Settings;

/// A route's configuration for tests: small request bodies (256 bytes),
/// short backend timeout (5 s).
pub(super) fn config() -> RouteConfig {
    RouteConfig {
        name: "r".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ttl: Duration::from_secs(60),
        stale: Duration::ZERO,
        max_object_bytes: 1 << 20,
        max_request_bytes: 256,
        exclude_fields: vec!["user".into()],
        deterministic: false,
        timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        max_connections: 1024,
        body_budget_bytes: 64 * 256,
        scope: KeyScope::Shared,
        credential_headers: vec![header::AUTHORIZATION],
        mark_down: MarkDown::default(),
        pick: crate::cache::pick::Pick::default(),
        models_refresh: Duration::from_secs(5),
        cold_start: None,
        cache: true,
        tiers: Default::default(),
        shedding: None,
        fallback: None,
        zones: None,
    }
}

/// Serves `cfg` in front of `pool`; its address and cache.
pub(super) async fn serve(
    cfg: RouteConfig,
    pool: Vec<(SocketAddr, u32)>,
) -> (SocketAddr, Arc<Cache>) {
    let l = bind(&cfg).await.unwrap();
    let addr = l.local_addr().unwrap();
    let cache = Cache::new(Settings::default()).unwrap();
    let pool: PoolSource = Arc::new(move || pool.clone());
    tokio::spawn(Route::new(cfg, cache.clone(), pool).serve(l));
    (addr, cache)
}
