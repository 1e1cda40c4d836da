//! OpenAI's `POST /v1/audio/transcriptions` for speech-recognition models.
//!
//! The form (`multipart/form-data`) carries `file` and `model`, and
//! optionally `response_format` (`json`, the default; `text`;
//! `verbose_json`). The file must be a WAV (RIFF, PCM or not): its length
//! in seconds is the request's size. Other OpenAI fields are accepted and
//! ignored.

use bytes::Bytes;
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde_json::json;

use super::{Body, Emulator, fnv, full, kserve::read_bytes, word};
use crate::emulate::models::{Kind, ModelError};

/// Form fields read at most (the file is one).
const MAX_FIELDS: usize = 32;

/// A WAV file's duration in seconds, from its `fmt ` byte rate and its
/// `data` size.
pub(super) fn wav_seconds(b: &[u8]) -> Result<f64, String> {
    let u32_at = |i: usize| -> Option<u32> {
        b.get(i..i.checked_add(4)?)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if b.len() < 12 || &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err("file must be a WAV file (RIFF/WAVE)".into());
    }
    let (mut at, mut byte_rate, mut data) = (12usize, None, None);
    // Each chunk: 4-byte id, 4-byte size, body padded to even length.
    while at + 8 <= b.len() && (byte_rate.is_none() || data.is_none()) {
        let id = &b[at..at + 4];
        let size = u32_at(at + 4).ok_or("a WAV chunk header is cut")? as usize;
        let body = at + 8;
        match id {
            b"fmt " => byte_rate = Some(u32_at(body + 8).ok_or("the WAV fmt chunk is cut")?),
            b"data" => data = Some(size.min(b.len().saturating_sub(body))),
            _ => {}
        }
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    match (byte_rate, data) {
        (Some(r), Some(d)) if r > 0 => Ok(d as f64 / r as f64),
        (Some(_), Some(_)) => Err("the WAV byte rate is 0".into()),
        _ => Err("the WAV file has no fmt or no data chunk".into()),
    }
}

/// The form's `file`, `model` and `response_format`.
async fn form(content_type: &str, body: Bytes) -> Result<(Bytes, String, String), String> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|_| "the body must be multipart/form-data with a boundary".to_string())?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut m = multer::Multipart::new(stream, boundary);
    let (mut file, mut model, mut format) = (None, None, "json".to_string());
    for _ in 0..MAX_FIELDS {
        let Some(field) = m.next_field().await.map_err(|e| format!("the form: {e}"))? else {
            break;
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| format!("the form field {name:?}: {e}"))?;
        let text = || String::from_utf8_lossy(&bytes).trim().to_string();
        match name.as_str() {
            "file" => file = Some(bytes.clone()),
            "model" => model = Some(text()),
            "response_format" => format = text(),
            _ => {}
        }
    }
    let file = file.ok_or("the form has no file")?;
    let model = model
        .filter(|m| !m.is_empty())
        .ok_or("the form has no model")?;
    Ok((file, model, format))
}

impl Emulator {
    /// `POST /v1/audio/transcriptions`.
    pub(super) async fn transcribe(&self, req: Request<Incoming>) -> Response<Body> {
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = match read_bytes(req).await {
            Ok(b) => b,
            Err((status, m)) => return self.error(status, &m),
        };
        let (file, model, format) = match form(&content_type, body).await {
            Ok(f) => f,
            Err(m) => return self.error(StatusCode::BAD_REQUEST, &m),
        };
        if !matches!(format.as_str(), "json" | "text" | "verbose_json") {
            return self.error(
                StatusCode::BAD_REQUEST,
                &format!("response_format {format:?}: use json, text or verbose_json"),
            );
        }
        match self.models.spec(&model).map(|s| s.kind) {
            Some(Kind::SpeechRecognition) => {}
            Some(k) => {
                return self.error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "the model `{model}` is {}, not speech-recognition",
                        k.name()
                    ),
                );
            }
            None => return self.refused(&ModelError::Unknown(model)),
        }
        let secs = match wav_seconds(&file) {
            Ok(s) => s,
            Err(m) => return self.error(StatusCode::BAD_REQUEST, &m),
        };
        if let Err(e) = self.models.serve(&model, secs, self.node.speed()).await {
            return self.refused(&e);
        }
        // About two words a second of speech.
        let seed = fnv(&file[..file.len().min(4096)]);
        let text: String = (0..(secs * 2.0).ceil() as u64)
            .map(|n| word(seed, n))
            .collect::<String>()
            .trim_start()
            .to_string();
        match format.as_str() {
            "text" => Response::builder()
                .header("content-type", "text/plain; charset=utf-8")
                .header("x-backend", &self.served.name)
                .body(full(text))
                .unwrap_or_else(|_| Response::new(full(""))),
            "verbose_json" => self.json(
                StatusCode::OK,
                &json!({"task": "transcribe", "language": "english", "duration": secs, "text": text, "segments": []}),
            ),
            _ => self.json(
                StatusCode::OK,
                &json!({"text": text, "usage": {"type": "duration", "seconds": secs.ceil() as u64}}),
            ),
        }
    }
}
