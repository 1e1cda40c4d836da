//! Non-LLM models on an emulated node: image classification and detection,
//! speech recognition, recommendation, time-series forecasting and video,
//! the other workloads platform teams mix into an inference fleet.
//!
//! A profile's `[[model]]` table names the model, its kind and, per hardware
//! class, what one request costs:
//!
//! ```toml
//! [[model]]
//! name = "resnet-50"
//! kind = "image-classification"
//! source = "MLPerf Inference v4.0, ResNet-50 offline, H100: 90k images/s at 224x224"
//! elements_per_unit = 3_000_000      # input elements per megapixel (RGB)
//! cost = [{ class = "h100", base_ms = 1.0, per_unit_ms = 4.0, slots = 4, load_s = 2 }]
//! ```
//!
//! A node runs each model it serves on `slots` instances of its own, beside
//! the LLM engine (as Triton's instance groups do); the two do not slow each
//! other, a simplification. A request waits for a free instance in arrival
//! order, then holds it for `base_ms + per_unit_ms × units`, where `units`
//! measures the input in the kind's unit (megapixels, audio seconds, items,
//! points, frames), so cost grows with input size. A node whose class has no
//! cost entry does not serve the model. Until `load_s` seconds after start a
//! model is loading, and its requests are refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;
use tokio::{sync::Semaphore, time::Instant};

use super::profile::ProfileError;

/// What a model does; each kind measures its input in its own unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Labels for an image; input in megapixels.
    ImageClassification,
    /// Boxes in an image; input in megapixels.
    ObjectDetection,
    /// Text from audio (`/v1/audio/transcriptions`); input in audio seconds.
    SpeechRecognition,
    /// Scores for candidate items; input in items.
    Recommendation,
    /// A forecast from a history; input in points.
    TimeSeries,
    /// Labels for a clip; input in frames.
    Video,
}

impl Kind {
    /// The name used in profiles and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::ImageClassification => "image-classification",
            Self::ObjectDetection => "object-detection",
            Self::SpeechRecognition => "speech-recognition",
            Self::Recommendation => "recommendation",
            Self::TimeSeries => "time-series",
            Self::Video => "video",
        }
    }

    /// What one unit of input is.
    pub fn unit(self) -> &'static str {
        match self {
            Self::ImageClassification | Self::ObjectDetection => "megapixels",
            Self::SpeechRecognition => "audio seconds",
            Self::Recommendation => "items",
            Self::TimeSeries => "points",
            Self::Video => "frames",
        }
    }
}

/// One non-LLM model (`[[model]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Its name, as requests give it.
    pub name: String,
    /// What it does.
    pub kind: Kind,
    /// The public figures its costs come from.
    pub source: String,
    /// Tensor elements in one unit of input (KServe v2 requests are
    /// measured by their elements; speech by the WAV's duration).
    pub elements_per_unit: f64,
    /// Inputs over this many units are refused.
    #[serde(default = "default_max_units")]
    pub max_units: f64,
    /// Cost per hardware class.
    pub cost: Vec<Cost>,
}

fn default_max_units() -> f64 {
    10_000.0
}

/// A model's cost on one class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// The class.
    pub class: String,
    /// Time of a request of no size, milliseconds.
    pub base_ms: f64,
    /// Time per unit of input, milliseconds.
    pub per_unit_ms: f64,
    /// Requests served at once.
    #[serde(default = "one_slot")]
    pub slots: u32,
    /// Seconds from start until the model is loaded.
    #[serde(default)]
    pub load_s: f64,
}

fn one_slot() -> u32 {
    1
}

impl ModelSpec {
    /// Checks the figures, and that every cost names one of `classes`.
    pub fn validate(&self, classes: &BTreeSet<&str>) -> Result<(), ProfileError> {
        let bad = |m: String| Err(ProfileError::Model(format!("{:?}: {m}", self.name)));
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(ProfileError::Model(
                "a model name must be 1-256 bytes".into(),
            ));
        }
        let e = self.elements_per_unit;
        if !(e.is_finite() && (1e-3..=1e12).contains(&e)) {
            return bad(format!("elements_per_unit {e} must be in [0.001, 1e12]"));
        }
        let m = self.max_units;
        if !(m.is_finite() && m > 0.0 && m <= 1e9) {
            return bad(format!("max_units {m} must be in (0, 1e9]"));
        }
        if self.cost.is_empty() {
            return bad("no cost entry: no class would serve it".into());
        }
        let mut seen = BTreeSet::new();
        for c in &self.cost {
            if !classes.contains(c.class.as_str()) {
                return bad(format!(
                    "cost names class {:?}, which is not defined",
                    c.class
                ));
            }
            if !seen.insert(c.class.as_str()) {
                return bad(format!("class {:?} has two cost entries", c.class));
            }
            let ms = |v: f64| v.is_finite() && (0.0..=3_600_000.0).contains(&v);
            if !ms(c.base_ms) || !ms(c.per_unit_ms) || c.base_ms + c.per_unit_ms <= 0.0 {
                return bad(format!(
                    "class {:?}: base_ms and per_unit_ms must be in [0, 3600000], not both 0",
                    c.class
                ));
            }
            if !(1..=4096).contains(&c.slots) {
                return bad(format!(
                    "class {:?}: slots {} must be 1-4096",
                    c.class, c.slots
                ));
            }
            if !(c.load_s.is_finite() && (0.0..=3600.0).contains(&c.load_s)) {
                return bad(format!(
                    "class {:?}: load_s {} must be in [0, 3600]",
                    c.class, c.load_s
                ));
            }
        }
        Ok(())
    }

    /// The cost entry of `class`, if it serves the model.
    pub fn cost_on(&self, class: &str) -> Option<&Cost> {
        self.cost.iter().find(|c| c.class == class)
    }
}

/// Why a model request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// This node serves no model of that name.
    #[error("the model `{0}` does not exist")]
    Unknown(String),
    /// The model is still loading.
    #[error("the model `{model}` is loading ({left_s:.1} s left)")]
    Loading {
        /// The model.
        model: String,
        /// Seconds until it is loaded.
        left_s: f64,
    },
    /// The input is larger than the model takes, or not positive.
    #[error("the input is {units} {unit}; the model `{model}` takes more than 0 and at most {max}")]
    Size {
        /// The model.
        model: String,
        /// The input's size.
        units: f64,
        /// Its unit.
        unit: &'static str,
        /// The largest accepted.
        max: f64,
    },
}

#[derive(Default, Clone, Copy)]
struct Totals {
    requests: u64,
    units: f64,
    busy_secs: f64,
}

struct Live {
    spec: ModelSpec,
    cost: Cost,
    slots: Semaphore,
    ready_at: Instant,
    waiting: AtomicUsize,
    running: AtomicUsize,
    totals: Mutex<Totals>,
}

/// The non-LLM models one node serves.
pub struct Models {
    live: BTreeMap<String, Live>,
}

/// What the metrics report of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelGauges {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Loaded yet.
    pub loaded: bool,
    /// Its load time, seconds.
    pub load_s: f64,
    /// Requests waiting for an instance.
    pub waiting: usize,
    /// Requests being served.
    pub running: usize,
    /// Requests served.
    pub requests: u64,
    /// Input served, in the kind's unit.
    pub units: f64,
    /// Instance-seconds spent serving.
    pub busy_secs: f64,
}

impl Models {
    /// The models of `specs` that `class` serves, each loading from now.
    pub fn new(specs: &[ModelSpec], class: &str) -> Arc<Self> {
        let now = Instant::now();
        let live = specs
            .iter()
            .filter_map(|s| {
                let cost = s.cost_on(class)?.clone();
                Some((
                    s.name.clone(),
                    Live {
                        spec: s.clone(),
                        slots: Semaphore::new(cost.slots as usize),
                        ready_at: now + Duration::from_secs_f64(cost.load_s),
                        cost,
                        waiting: AtomicUsize::new(0),
                        running: AtomicUsize::new(0),
                        totals: Mutex::new(Totals::default()),
                    },
                ))
            })
            .collect();
        Arc::new(Self { live })
    }

    /// No model.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            live: BTreeMap::new(),
        })
    }

    /// The spec of `name`, if this node serves it.
    pub fn spec(&self, name: &str) -> Option<&ModelSpec> {
        self.live.get(name).map(|l| &l.spec)
    }

    /// Serves a request of `units` on `name` at `speed` (0.5: twice as
    /// slow): waits for an instance, then for the request's time. Returns
    /// the seconds it was served for.
    pub async fn serve(&self, name: &str, units: f64, speed: f64) -> Result<f64, ModelError> {
        let l = self
            .live
            .get(name)
            .ok_or_else(|| ModelError::Unknown(name.to_string()))?;
        let now = Instant::now();
        if now < l.ready_at {
            return Err(ModelError::Loading {
                model: name.to_string(),
                left_s: (l.ready_at - now).as_secs_f64(),
            });
        }
        if !(units.is_finite() && units > 0.0 && units <= l.spec.max_units) {
            return Err(ModelError::Size {
                model: name.to_string(),
                units,
                unit: l.spec.kind.unit(),
                max: l.spec.max_units,
            });
        }
        let secs = (l.cost.base_ms + l.cost.per_unit_ms * units) / 1e3 / speed.max(1e-3);
        // Counted by guards, so a client that goes away mid-wait leaves the
        // gauges right.
        let waiting = Counted::new(&l.waiting);
        // The semaphore is fair: instances go in arrival order. It is never
        // closed, so acquiring cannot fail.
        let permit = l.slots.acquire().await;
        drop(waiting);
        let running = Counted::new(&l.running);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        drop((running, permit));
        let mut t = l.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.requests += 1;
        t.units += units;
        t.busy_secs += secs;
        Ok(secs)
    }

    /// Every model's figures, by name.
    pub fn gauges(&self) -> Vec<ModelGauges> {
        let now = Instant::now();
        self.live
            .values()
            .map(|l| {
                let t = *l.totals.lock().unwrap_or_else(|e| e.into_inner());
                ModelGauges {
                    name: l.spec.name.clone(),
                    kind: l.spec.kind,
                    loaded: now >= l.ready_at,
                    load_s: l.cost.load_s,
                    waiting: l.waiting.load(Ordering::Relaxed),
                    running: l.running.load(Ordering::Relaxed),
                    requests: t.requests,
                    units: t.units,
                    busy_secs: t.busy_secs,
                }
            })
            .collect()
    }
}

/// Appends every model's metrics, in Prometheus text, to `out`.
pub fn render(gauges: &[ModelGauges], out: &mut String) {
    use std::fmt::Write as _;
    type Figure = fn(&ModelGauges) -> f64;
    let figures: [(&str, &str, Figure); 7] = [
        ("emulator_model_loaded", "gauge", |g| {
            f64::from(u8::from(g.loaded))
        }),
        ("emulator_model_load_seconds", "gauge", |g| g.load_s),
        ("emulator_model_requests_waiting", "gauge", |g| {
            g.waiting as f64
        }),
        ("emulator_model_requests_running", "gauge", |g| {
            g.running as f64
        }),
        ("emulator_model_requests_total", "counter", |g| {
            g.requests as f64
        }),
        ("emulator_model_input_units_total", "counter", |g| g.units),
        ("emulator_model_busy_seconds_total", "counter", |g| {
            g.busy_secs
        }),
    ];
    for (name, kind, f) in figures {
        if gauges.is_empty() {
            break;
        }
        // The base model's `emulator_model_loaded` has its TYPE line.
        if name != "emulator_model_loaded" {
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        for g in gauges {
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{}\",kind=\"{}\",unit=\"{}\"}} {}",
                g.name.replace(['"', '\\', '\n'], ""),
                g.kind.name(),
                g.kind.unit(),
                f(g)
            );
        }
    }
}

/// One in a gauge while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(g: &'a AtomicUsize) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
