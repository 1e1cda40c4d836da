//! Whether a request streams, and whether its answer is sampled (random),
//! read the way the inference servers read it. When in doubt the answer is
//! "streams" or "sampled": a bypass costs one backend call, a wrong hit
//! serves someone else's random answer.

use serde_json::{Map, Value};

/// The request paths whose bodies carry sampling settings: OpenAI's
/// completions, chat and responses, Anthropic's messages, and the
/// `/generate` of TGI and SGLang.
pub(super) fn is_generation(path: &str) -> bool {
    ["/completions", "/responses", "/messages", "/generate"]
        .iter()
        .any(|p| path.ends_with(p))
}

/// Whether the request asks for a streamed answer: a `stream` field that is
/// anything but absent, `null`, `false`, `0` or a false word (as pydantic
/// reads `"false"`, `"0"`, `"no"`, `"off"`), or a streaming path such as
/// TGI's `/generate_stream`.
pub(super) fn streams(path: &str, obj: &Map<String, Value>) -> bool {
    path.ends_with("_stream") || obj.get("stream").is_some_and(truthy)
}

/// A JSON value read as a flag. Strings other than the known words, arrays
/// and objects are truthy: the backend might read them so.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "" | "false" | "0" | "no" | "off" | "f" | "n"
        ),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Whether a generation request's answer is sampled.
///
/// - TGI (`parameters`): greedy unless `do_sample`, or a warper moves the
///   distribution (temperature other than 1, `top_k`, `top_p` or
///   `typical_p` below 1), or `best_of` above 1; TGI rejects temperature 0.
/// - SGLang (`sampling_params`): temperature defaults to 1; only 0 is
///   greedy.
/// - TGI's `/generate` with `inputs` and no `parameters` is greedy.
/// - OpenAI and Anthropic (top level): temperature defaults to 1, so absent
///   means sampled; `n` or `best_of` above 1 sample too.
pub(super) fn sampled(obj: &Map<String, Value>) -> bool {
    if let Some(Value::Object(p)) = obj.get("parameters") {
        return tgi_sampled(p);
    }
    if let Some(Value::Object(p)) = obj.get("sampling_params") {
        return top_level_sampled(p);
    }
    if obj.contains_key("inputs") && !obj.contains_key("parameters") {
        return false;
    }
    top_level_sampled(obj)
}

/// The OpenAI, Anthropic and SGLang reading: only temperature 0 is greedy.
fn top_level_sampled(p: &Map<String, Value>) -> bool {
    num(p, "temperature") != Some(0.0) || more_than_one(p, "n") || more_than_one(p, "best_of")
}

/// TGI's reading of `parameters`.
fn tgi_sampled(p: &Map<String, Value>) -> bool {
    let set = |f: &str| p.get(f).is_some_and(|v| !v.is_null());
    p.get("do_sample").is_some_and(truthy)
        || (set("temperature") && num(p, "temperature") != Some(1.0))
        || (set("top_k") && num(p, "top_k") != Some(0.0))
        || (set("top_p") && num(p, "top_p").is_none_or(|x| x < 1.0))
        || (set("typical_p") && num(p, "typical_p").is_none_or(|x| x < 1.0))
        || more_than_one(p, "best_of")
        || more_than_one(p, "n")
}

/// A numeric field; a field that is present but not a number reads as NaN,
/// which equals nothing, so it never looks greedy.
fn num(p: &Map<String, Value>, f: &str) -> Option<f64> {
    p.get(f).map(|v| v.as_f64().unwrap_or(f64::NAN))
}

/// Whether a count field asks for more than one answer (a present field
/// that is not a number counts as more).
fn more_than_one(p: &Map<String, Value>, f: &str) -> bool {
    match p.get(f) {
        None | Some(Value::Null) => false,
        Some(v) => v.as_f64().is_none_or(|x| x > 1.0),
    }
}
