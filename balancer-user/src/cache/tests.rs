use super::*;

fn entry(model: &str, version: String) -> Arc<Entry> {
    Arc::new(Entry {
        status: 200,
        content_type: None,
        body: bytes::Bytes::from_static(b"{}"),
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
        cost_s: 0.2,
        model: model.into(),
        version,
        prompt: "hello world".into(),
    })
}

#[tokio::test]
async fn versions_and_invalidation_without_l2() {
    let mut s = Settings::default();
    s.versions.insert("m".into(), "v1".into());
    let c = Cache::new(s).unwrap();
    assert_eq!(c.version("m"), "v1");
    assert_eq!(c.version("other"), "");
    let k1 = key::key("r", "/", "m", &c.version("m"), b"", b"1");
    c.fill(k1, entry("m", c.version("m")));
    assert!(c.lookup("m", &k1).await.is_some());
    let r = c.bump_version("m").await.unwrap();
    assert!(r.version.starts_with("v1+"), "{}", r.version);
    assert_eq!(r.l1_removed, 1, "old-version entries purged");
    let k2 = key::key("r", "/", "m", &c.version("m"), b"", b"1");
    assert_ne!(k1, k2);
    c.fill(k2, entry("m", c.version("m")));
    let r = c
        .invalidate(Invalidation::Prefix {
            model: "m".into(),
            prefix: "hello".into(),
        })
        .await
        .unwrap();
    assert_eq!(r.l1_removed, 1);
    let bad = c.invalidate(Invalidation::Key {
        model: "m".into(),
        key: "nope".into(),
    });
    assert!(matches!(bad.await, Err(CacheError::BadKey(_))));
    let s = c.stats();
    assert_eq!((s.stored, s.invalidated, s.entries), (2, 2, 0));
}

/// A snapshot whose every number differs, for tests that pin formats.
pub(crate) fn sample_stats() -> CacheStats {
    CacheStats {
        hits: 1,
        hits_l2: 2,
        misses: 3,
        coalesced: 4,
        bypasses: 5,
        too_large: 6,
        uncacheable: 7,
        backend_errors: 8,
        stored: 9,
        rejected: 10,
        evictions: 11,
        invalidated: 12,
        bytes_served: 13_000,
        bytes_stored: 14_000,
        marked_down: 21,
        gpu_seconds_saved: 1.5,
        entries: 15,
        bytes: 16_000,
        budget: 17_000,
        l2: Some(L2Stats {
            url: "redis://127.0.0.1:6379".into(),
            up: true,
            connects: 18,
            errors: 19,
            pending: 20,
        }),
        versions: BTreeMap::from([("m".to_string(), "v1+abc".to_string())]),
    }
}

#[test]
fn stats_json_is_stable() {
    // The API's wire format: field names and order are what clients and
    // docs read.
    let s = sample_stats();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"hits":1,"hits_l2":2,"misses":3,"coalesced":4,"bypasses":5,"too_large":6,"#,
            r#""uncacheable":7,"backend_errors":8,"stored":9,"rejected":10,"evictions":11,"invalidated":12,"#,
            r#""bytes_served":13000,"bytes_stored":14000,"marked_down":21,"gpu_seconds_saved":1.5,"#,
            r#""entries":15,"bytes":16000,"budget":17000,"#,
            r#""l2":{"url":"redis://127.0.0.1:6379","up":true,"connects":18,"errors":19,"pending":20},"versions":{"m":"v1+abc"}}"#,
        )
    );
    assert_eq!(serde_json::from_str::<CacheStats>(&json).unwrap(), s);
}
