//! Keys and cacheability, one rule a test.

use super::*;

fn k(path: &str, body: &str) -> Result<Key, Bypass> {
    let c = classify(
        path,
        body.as_bytes(),
        &["user".into()],
        OptIn::Default,
        false,
    )?;
    Ok(key("r", path, &c.model, "v1", b"", &c.canonical))
}

#[test]
fn canonical_requests_share_a_key() {
    let a = k("/v1/embeddings", r#"{"model":"m","input":"hi","user":"a"}"#).unwrap();
    let b = k(
        "/v1/embeddings",
        "{ \"input\" : \"hi\",\n \"model\":\"m\", \"user\":\"b\"}",
    )
    .unwrap();
    assert_eq!(a, b);
    let c = k(
        "/v1/completions",
        r#"{"model":"m","prompt":"x","temperature":0}"#,
    )
    .unwrap();
    let d = k(
        "/v1/completions",
        r#"{"temperature":0.0,"prompt":"x","model":"m"}"#,
    )
    .unwrap();
    assert_eq!(c, d);
    let e = k(
        "/v1/completions",
        r#"{"model":"m","prompt":"y","temperature":0}"#,
    )
    .unwrap();
    assert_ne!(c, e);
    assert_ne!(
        key("r", "/p", "m", "v1", b"", b"{}"),
        key("r", "/p", "m", "v2", b"", b"{}")
    );
    assert_ne!(
        key("r", "/p", "m", "v", b"", b"{}"),
        key("r2", "/p", "m", "v", b"", b"{}")
    );
    assert_ne!(
        key("ab", "/p", "", "", b"", b""),
        key("a", "b/p", "", "", b"", b"")
    );
}

#[test]
fn determinism_rules() {
    let sampled = k("/v1/completions", r#"{"model":"m","prompt":"x"}"#);
    assert_eq!(sampled, Err(Bypass::Sampling));
    let n2 = k(
        "/v1/chat/completions",
        r#"{"model":"m","messages":[],"temperature":0,"n":2}"#,
    );
    assert_eq!(n2, Err(Bypass::Sampling));
    let st = k(
        "/v1/embeddings",
        r#"{"model":"m","input":"x","stream":true}"#,
    );
    assert_eq!(st, Err(Bypass::Streaming));
    assert_eq!(k("/v1/embeddings", "{not json"), Err(Bypass::NotJson));
    assert_eq!(k("/v1/embeddings", "[1]"), Err(Bypass::NotJson));
    assert_eq!(k("/rank", r#"{"q":1}"#), Err(Bypass::NotOptedIn));
    let forced = classify("/rank", br#"{"q":1}"#, &[], OptIn::Force, false);
    assert!(forced.is_ok());
    let out = classify(
        "/v1/embeddings",
        br#"{"input":"x"}"#,
        &[],
        OptIn::Bypass,
        false,
    );
    assert_eq!(out.err(), Some(Bypass::OptedOut));
}

#[test]
fn prompt_and_key_text() {
    let c = classify(
        "/v1/chat/completions",
        br#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#,
        &[],
        OptIn::Default,
        false,
    )
    .unwrap();
    assert_eq!(c.prompt, "be brief\nhi");
    let key = key("r", "/", "m", "", b"", b"");
    assert_eq!(Key::parse(&key.to_string()), Some(key));
    assert_eq!(Key::parse("zz"), None);
}

#[test]
fn any_truthy_stream_streams() {
    // {stream value, streams?}: what a backend might read as "stream".
    let table = [
        ("true", true),
        ("1", true),
        ("\"true\"", true),
        ("\"yes\"", true),
        ("\"anything\"", true),
        ("[]", true),
        ("{}", true),
        ("false", false),
        ("null", false),
        ("0", false),
        ("0.0", false),
        ("\"false\"", false),
        ("\"0\"", false),
        ("\"\"", false),
    ];
    for (v, streams) in table {
        let body = format!(r#"{{"model":"m","input":"x","stream":{v}}}"#);
        let got = k("/v1/embeddings", &body);
        assert_eq!(got == Err(Bypass::Streaming), streams, "stream: {v}");
    }
    assert_eq!(
        k("/generate_stream", r#"{"inputs":"x"}"#),
        Err(Bypass::Streaming)
    );
}

#[test]
fn sampling_rules_hold_on_every_generation_path_even_on_deterministic_routes() {
    // {description, path, body, sampled?}
    let table = [
        (
            "responses, default temperature",
            "/v1/responses",
            r#"{"model":"m","input":"x"}"#,
            true,
        ),
        (
            "responses, greedy",
            "/v1/responses",
            r#"{"model":"m","input":"x","temperature":0}"#,
            false,
        ),
        (
            "messages, default temperature",
            "/v1/messages",
            r#"{"model":"m","messages":[],"max_tokens":5}"#,
            true,
        ),
        (
            "messages, temperature 0",
            "/v1/messages",
            r#"{"model":"m","messages":[],"temperature":0}"#,
            false,
        ),
        (
            "messages, temperature as text",
            "/v1/messages",
            r#"{"messages":[],"temperature":"0"}"#,
            true,
        ),
        (
            "chat, n 2",
            "/v1/chat/completions",
            r#"{"messages":[],"temperature":0,"n":2}"#,
            true,
        ),
        (
            "chat, n as text",
            "/v1/chat/completions",
            r#"{"messages":[],"temperature":0,"n":"2"}"#,
            true,
        ),
        (
            "completions, best_of 3",
            "/v1/completions",
            r#"{"prompt":"x","temperature":0,"best_of":3}"#,
            true,
        ),
        (
            "TGI, no parameters (greedy)",
            "/generate",
            r#"{"inputs":"x"}"#,
            false,
        ),
        (
            "TGI, greedy parameters",
            "/generate",
            r#"{"inputs":"x","parameters":{"max_new_tokens":5,"temperature":1.0,"top_k":0}}"#,
            false,
        ),
        (
            "TGI, do_sample",
            "/generate",
            r#"{"inputs":"x","parameters":{"do_sample":true}}"#,
            true,
        ),
        (
            "TGI, temperature 0.7",
            "/generate",
            r#"{"inputs":"x","parameters":{"temperature":0.7}}"#,
            true,
        ),
        (
            "TGI, top_p 0.9",
            "/generate",
            r#"{"inputs":"x","parameters":{"top_p":0.9}}"#,
            true,
        ),
        (
            "TGI, best_of 2",
            "/generate",
            r#"{"inputs":"x","parameters":{"best_of":2}}"#,
            true,
        ),
        (
            "SGLang, default temperature",
            "/generate",
            r#"{"text":"x","sampling_params":{"max_new_tokens":5}}"#,
            true,
        ),
        (
            "SGLang, temperature 0",
            "/generate",
            r#"{"text":"x","sampling_params":{"temperature":0}}"#,
            false,
        ),
        (
            "SGLang, no sampling_params",
            "/generate",
            r#"{"text":"x"}"#,
            true,
        ),
    ];
    for deterministic in [false, true] {
        for (what, path, body, sampled) in table {
            let got = classify(path, body.as_bytes(), &[], OptIn::Default, deterministic);
            assert_eq!(
                got.err() == Some(Bypass::Sampling),
                sampled,
                "{what} (deterministic route: {deterministic})"
            );
        }
    }
}

#[test]
fn the_key_holds_query_and_credential() {
    let base = key("r", "/v1/rerank?top_n=3", "m", "v", b"", b"{}");
    assert_ne!(base, key("r", "/v1/rerank?top_n=50", "m", "v", b"", b"{}"));
    assert_ne!(base, key("r", "/v1/rerank?top_n=3", "m", "v", b"c", b"{}"));
    let headers = |v: &'static [u8]| [("authorization", v)].into_iter();
    let none = std::iter::empty::<(&str, &[u8])>;
    // Shared: credentials never enter the key.
    assert_eq!(KeyScope::Shared.credential(headers(b"a")), Ok(vec![]));
    // Per credential: each credential its own part; none, the anonymous one.
    let a = KeyScope::PerCredential.credential(headers(b"a")).unwrap();
    let b = KeyScope::PerCredential.credential(headers(b"b")).unwrap();
    assert_ne!(a, b);
    assert_eq!(KeyScope::PerCredential.credential(none()), Ok(vec![]));
    // The header's name counts: `x-api-key: a` is not `authorization: a`.
    let other = [("x-api-key", &b"a"[..])].into_iter();
    assert_ne!(KeyScope::PerCredential.credential(other).unwrap(), a);
    // Require-auth: shared among holders, refused without.
    assert_eq!(KeyScope::RequireAuth.credential(headers(b"a")), Ok(vec![]));
    assert_eq!(
        KeyScope::RequireAuth.credential(none()),
        Err(Bypass::NoCredentials)
    );
    for (word, scope) in KeyScope::ALL {
        assert_eq!(KeyScope::parse(word), Some(scope));
        assert_eq!(scope.label(), word);
    }
    assert_eq!(KeyScope::parse("per-user"), None);
}
