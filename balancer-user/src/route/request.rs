//! A request's shape, parsed once per request: the model it names, how
//! much prompt text it carries, how many tokens it asks for, and how many
//! images. Routing reads costs from it ([`super::tokens`] turns bytes into
//! tokens).
//!
//! Shapes the gateway knows: OpenAI completions, chat, responses and
//! embeddings; Anthropic messages; TGI's `inputs`/`parameters`. Anything
//! else (a KServe tensor, a JSON body of another kind) counts its whole
//! body as prompt bytes: the cost is then only as good as that guess.

use serde_json::Value;

/// What a route knows of a request before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// The `model` field ("" when absent or not a string).
    pub model: String,
    /// Bytes of prompt text (message contents, prompts, inputs).
    pub prompt_bytes: u64,
    /// Output tokens asked for (`max_completion_tokens`, `max_tokens`,
    /// `max_output_tokens`, TGI's `parameters.max_new_tokens`), when given.
    pub max_tokens: Option<u32>,
    /// Images in chat or message content parts.
    pub images: u32,
    /// Inputs of an embeddings request (1 for anything else).
    pub inputs: u32,
    /// Whether it asks for a streamed answer (`"stream": true`).
    pub stream: bool,
    /// The prompt text in order, its first [`MAX_TEXT`] bytes: what prefix
    /// matching hashes.
    pub text: Vec<u8>,
}

/// Most prompt bytes a shape keeps (the prefix index hashes no more).
pub const MAX_TEXT: usize = super::prefix::BLOCK_BYTES * super::prefix::MAX_BLOCKS;

/// The shape of `body` (`None` when it is not a JSON object: the gateway
/// forwards such bodies and knows nothing of their cost).
pub fn parse(body: &[u8]) -> Option<Shape> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let mut s = Shape {
        model: obj
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        inputs: 1,
        stream: obj.get("stream").and_then(Value::as_bool).unwrap_or(false),
        ..Shape::default()
    };
    let known = ["messages", "prompt", "input", "inputs"];
    if !known.iter().any(|k| obj.contains_key(*k)) {
        s.prompt_bytes = body.len() as u64;
    }
    if let Some(m) = obj.get("messages").and_then(Value::as_array) {
        for msg in m {
            text(msg.get("content"), &mut s);
        }
    }
    // `system` is Anthropic's; `instructions` the Responses API's.
    for k in ["prompt", "inputs", "system", "instructions"] {
        text(obj.get(k), &mut s);
    }
    match obj.get("input") {
        // One input given as token ids.
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => text(obj.get("input"), &mut s),
        Some(Value::Array(a)) => {
            s.inputs = a.len().max(1) as u32;
            for x in a {
                match x {
                    // A Responses API item: its content parts.
                    Value::Object(o) => text(o.get("content"), &mut s),
                    other => text(Some(other), &mut s),
                }
            }
        }
        other => text(other, &mut s),
    }
    let limit = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()))
        .or_else(|| obj.get("parameters")?.get("max_new_tokens"));
    s.max_tokens = limit
        .and_then(Value::as_u64)
        .map(|n| n.min(u32::MAX as u64) as u32);
    Some(s)
}

/// `body` (a JSON object) with its field `key` set to `value`; `None` when
/// it is not a JSON object.
pub fn with_field(body: &[u8], key: &str, value: Value) -> Option<Vec<u8>> {
    let mut m: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    m.insert(key.into(), value);
    serde_json::to_vec(&m).ok()
}

/// Adds a content value's text bytes and images to `s`: a string, a list
/// of strings or token ids, or content parts (`{"type": "text", "text":
/// …}`, `image_url`, `image`, `input_image`).
fn text(v: Option<&Value>, s: &mut Shape) {
    match v {
        Some(Value::String(t)) => {
            s.prompt_bytes += t.len() as u64;
            let room = MAX_TEXT.saturating_sub(s.text.len());
            s.text.extend_from_slice(&t.as_bytes()[..t.len().min(room)]);
        }
        // A token id counts as about one token's text.
        Some(Value::Number(_)) => s.prompt_bytes += 4,
        Some(Value::Array(a)) => a.iter().for_each(|x| text(Some(x), s)),
        Some(Value::Object(part)) => {
            let kind = part.get("type").and_then(Value::as_str);
            if matches!(kind, Some("image_url" | "image" | "input_image")) {
                s.images += 1;
            }
            text(part.get("text"), s);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_apis_routes_see() {
        let cases: &[(&str, &str, Option<Shape>)] = &[
            (
                "chat with text and an image part",
                r#"{"model":"llava","max_tokens":64,"messages":[
                    {"role":"system","content":"be brief"},
                    {"role":"user","content":[{"type":"text","text":"what is this?"},
                        {"type":"image_url","image_url":{"url":"data:..."}}]}]}"#,
                Some(Shape {
                    model: "llava".into(),
                    prompt_bytes: 8 + 13,
                    max_tokens: Some(64),
                    images: 1,
                    inputs: 1,
                    ..Shape::default()
                }),
            ),
            (
                "completions: max_completion_tokens wins, prompt lists add up",
                r#"{"model":"m","prompt":["abcd","ef"],"max_tokens":9,"max_completion_tokens":3}"#,
                Some(Shape {
                    model: "m".into(),
                    prompt_bytes: 6,
                    max_tokens: Some(3),
                    images: 0,
                    inputs: 1,
                    ..Shape::default()
                }),
            ),
            (
                "embeddings: one input per list item, token ids count four bytes",
                r#"{"model":"e","input":["hello", [1,2,3]]}"#,
                Some(Shape {
                    model: "e".into(),
                    prompt_bytes: 5 + 12,
                    max_tokens: None,
                    images: 0,
                    inputs: 2,
                    ..Shape::default()
                }),
            ),
            (
                "TGI: inputs and parameters.max_new_tokens",
                r#"{"inputs":"tell me","parameters":{"max_new_tokens":20}}"#,
                Some(Shape {
                    model: String::new(),
                    prompt_bytes: 7,
                    max_tokens: Some(20),
                    images: 0,
                    inputs: 1,
                    ..Shape::default()
                }),
            ),
            (
                "anthropic: system and messages",
                r#"{"model":"c","system":"sys","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
                Some(Shape {
                    model: "c".into(),
                    prompt_bytes: 5,
                    max_tokens: Some(5),
                    images: 0,
                    inputs: 1,
                    ..Shape::default()
                }),
            ),
            (
                "an unknown JSON shape counts its whole body",
                r#"{"model":"r","tensor":[1,2]}"#,
                Some(Shape {
                    model: "r".into(),
                    prompt_bytes: 28,
                    max_tokens: None,
                    images: 0,
                    inputs: 1,
                    ..Shape::default()
                }),
            ),
            ("not JSON", "hello", None),
            ("not an object", "[1,2]", None),
        ];
        for (what, body, want) in cases {
            let got = parse(body.as_bytes()).map(|s| Shape {
                text: Vec::new(),
                ..s
            });
            assert_eq!(&got, want, "{what}");
        }
    }

    #[test]
    fn token_ids_are_one_input_and_null_limits_are_skipped() {
        let s =
            parse(br#"{"input":[1,2,3],"max_completion_tokens":null,"max_tokens":64}"#).unwrap();
        assert_eq!((s.inputs, s.prompt_bytes, s.max_tokens), (1, 12, Some(64)));
    }

    #[test]
    fn the_prompt_text_is_kept_in_order_and_capped() {
        let s = parse(br#"{"stream":true,"messages":[{"content":"ab"},{"content":[{"type":"text","text":"cd"}]}]}"#)
            .unwrap();
        assert_eq!((s.text.as_slice(), s.stream), (&b"abcd"[..], true));
        let long = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(MAX_TEXT + 10));
        let s = parse(long.as_bytes()).unwrap();
        assert_eq!(s.text.len(), MAX_TEXT);
        assert_eq!(
            s.prompt_bytes,
            MAX_TEXT as u64 + 10,
            "the bytes still count"
        );
    }

    #[test]
    fn odd_values_do_not_confuse_it() {
        let s = parse(br#"{"model":7,"max_tokens":-1,"messages":"x","prompt":null}"#).unwrap();
        assert_eq!(
            (s.model.as_str(), s.max_tokens, s.prompt_bytes),
            ("", None, 0)
        );
        let huge = parse(br#"{"max_tokens":99999999999}"#).unwrap();
        assert_eq!(huge.max_tokens, Some(u32::MAX));
    }
}
