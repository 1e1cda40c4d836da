//! LoRA adapters on an emulated node: loaded or not, as in vLLM.
//!
//! A request naming an adapter that is not loaded starts its load (or
//! joins one under way) and waits `load_s` seconds of wall time before it
//! joins the batch; requests for the base model or a loaded adapter go on
//! meanwhile. At most `max_loras` adapters stay loaded; loading one more
//! evicts the least recently used (vLLM keeps adapters with requests in
//! flight; this model does not look, a simplification). A request on an
//! adapter costs what one on the base model costs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;

use super::profile::Lora;

/// Errors naming an adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// Neither the base model nor an adapter this node knows.
    #[error("the model `{0}` does not exist")]
    Unknown(String),
    /// Unloading an adapter that is not loaded.
    #[error("the lora adapter `{0}` is not loaded")]
    NotLoaded(String),
    /// An adapter name that is empty or over 256 bytes.
    #[error("lora_name must be 1-256 bytes")]
    BadName,
}

#[derive(Default)]
struct State {
    /// Loaded adapters, least recently used first.
    loaded: Vec<String>,
    /// Loads under way, each with its waiters' wake-up.
    loading: HashMap<String, Arc<Notify>>,
    /// Adapters known, with their load times (profile or API).
    known: HashMap<String, f64>,
    loads: u64,
    load_secs: f64,
}

/// One node's adapters.
pub struct Adapters {
    settings: Lora,
    state: Mutex<State>,
}

/// What the metrics report of the adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterGauges {
    /// Loaded adapters, least recently used first.
    pub loaded: Vec<String>,
    /// Adapters being loaded.
    pub loading: Vec<String>,
    /// At most this many loaded.
    pub max_loras: u32,
    /// Loads finished.
    pub loads: u64,
    /// Seconds spent loading, summed.
    pub load_secs: f64,
}

impl Adapters {
    /// The adapters of `settings`, none loaded.
    pub fn new(settings: Lora) -> Arc<Self> {
        let known = settings
            .adapters
            .iter()
            .map(|a| (a.name.clone(), a.load_s))
            .collect();
        Arc::new(Self {
            settings,
            state: Mutex::new(State {
                known,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once adapter `name` is loaded, loading it first if need be.
    pub async fn acquire(self: &Arc<Self>, name: &str) -> Result<(), AdapterError> {
        loop {
            // Decided under one lock: loaded, joining a load, or loading.
            let (notify, secs) = {
                let mut st = self.lock();
                if let Some(i) = st.loaded.iter().position(|n| n == name) {
                    let n = st.loaded.remove(i);
                    st.loaded.push(n);
                    return Ok(());
                }
                if let Some(n) = st.loading.get(name) {
                    (n.clone(), None)
                } else {
                    let Some(secs) = st.known.get(name).copied() else {
                        return Err(AdapterError::Unknown(name.to_string()));
                    };
                    let n = Arc::new(Notify::new());
                    st.loading.insert(name.to_string(), n.clone());
                    (n, Some(secs))
                }
            };
            let Some(secs) = secs else {
                let woken = notify.notified();
                // Checked again once registered: a load that ended in
                // between is not waited for.
                if self.lock().loading.contains_key(name) {
                    woken.await;
                }
                continue;
            };
            // Its own task: a client that goes away mid-load does not leave
            // the load (and everyone waiting on it) hanging.
            let (me, name) = (self.clone(), name.to_string());
            tokio::spawn(async move {
                me.finish_load(&name, secs).await;
                notify.notify_waiters();
            });
        }
    }

    /// Waits `secs` (the load), then marks `name` loaded, evicting the least
    /// recently used beyond `max_loras`.
    async fn finish_load(&self, name: &str, secs: f64) {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let mut st = self.lock();
        st.loading.remove(name);
        st.loaded.push(name.to_string());
        let max = self.settings.max_loras as usize;
        while st.loaded.len() > max {
            st.loaded.remove(0);
        }
        st.loads += 1;
        st.load_secs += secs;
    }

    /// vLLM's `/v1/load_lora_adapter`: makes `name` known (with the
    /// profile's load time, or the default) and loads it.
    pub async fn load_by_api(self: &Arc<Self>, name: &str) -> Result<(), AdapterError> {
        if name.is_empty() || name.len() > 256 {
            return Err(AdapterError::BadName);
        }
        {
            let mut st = self.lock();
            let default = self.settings.default_load_s;
            st.known.entry(name.to_string()).or_insert(default);
        }
        self.acquire(name).await
    }

    /// vLLM's `/v1/unload_lora_adapter`.
    pub fn unload(&self, name: &str) -> Result<(), AdapterError> {
        let mut st = self.lock();
        let before = st.loaded.len();
        st.loaded.retain(|n| n != name);
        if st.loaded.len() == before {
            return Err(AdapterError::NotLoaded(name.to_string()));
        }
        Ok(())
    }

    /// The adapters' state, for metrics and `/v1/models`.
    pub fn gauges(&self) -> AdapterGauges {
        let st = self.lock();
        let mut loading: Vec<String> = st.loading.keys().cloned().collect();
        loading.sort();
        AdapterGauges {
            loaded: st.loaded.clone(),
            loading,
            max_loras: self.settings.max_loras,
            loads: st.loads,
            load_secs: st.load_secs,
        }
    }
}
