//! API fidelity: the real `openai` Python client (pinned, installed by
//! `cargo xtask setup` in `target/openai-venv`) against `balancer emulate`'s
//! server. Every answer must parse into the client's own types: completions,
//! chat, both streamed, embeddings of a list (one vector per input), the
//! model list, and speech transcriptions in each response format.

use std::{path::PathBuf, process::Command};

use balancer::emulate::{
    adapters::Adapters,
    models::Models,
    node::Node,
    profile::Profile,
    server::{Emulator, Served, serve},
};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BALANCER_OPENAI_PYTHON") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("openai-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup`, which installs the openai client this suite drives",
        p.display()
    );
    p
}

const SCRIPT: &str = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0, timeout=30)
r = c.completions.create(model="llama-3.1-8b", prompt="hello there", max_tokens=5)
assert r.usage.completion_tokens == 5 and r.choices[0].text, r
r = c.chat.completions.create(model="llama-3.1-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
assert r.choices[0].message.content and r.choices[0].finish_reason == "length", r
n = 0
for ch in c.chat.completions.create(model="llama-3.1-8b", messages=[{"role": "user", "content": "hi"}],
                                    max_tokens=6, stream=True, stream_options={"include_usage": True}):
    if ch.choices and ch.choices[0].delta.content:
        n += 1
    if ch.usage:
        assert ch.usage.completion_tokens == 6, ch
assert n == 6, n
n = sum(1 for ch in c.completions.create(model="llama-3.1-8b", prompt="x", max_tokens=3, stream=True)
        if ch.choices and ch.choices[0].text)
assert n == 3, n
e = c.embeddings.create(model="llama-3.1-8b", input=["a", "b", "c"])
assert [d.index for d in e.data] == [0, 1, 2] and all(len(d.embedding) == 8 for d in e.data), e
ids = [m.id for m in c.models.list()]
assert ids[0] == "llama-3.1-8b" and "whisper-large-v3" in ids, ids
import io, struct
wav = b"RIFF" + struct.pack("<I", 36 + 64000) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) \
    + b"data" + struct.pack("<I", 64000) + bytes(64000)
t = c.audio.transcriptions.create(model="whisper-large-v3", file=("a.wav", io.BytesIO(wav), "audio/wav"))
assert t.text and len(t.text.split()) == 4, t
t = c.audio.transcriptions.create(model="whisper-large-v3", file=("a.wav", io.BytesIO(wav)), response_format="text")
assert isinstance(t, str) and len(t.split()) == 4, t
v = c.audio.transcriptions.create(model="whisper-large-v3", file=("a.wav", io.BytesIO(wav)), response_format="verbose_json")
assert v.duration == 2.0 and v.text, v
try:
    c.completions.create(model="other", prompt="x")
    raise SystemExit("a wrong model was answered")
except openai.NotFoundError:
    pass
print("ok")
"#;

#[test]
fn the_openai_client_accepts_every_answer() {
    let python = python();
    let profile = balancer_tests::scenarios_dir().join("profiles/llama-3.1-8b.toml");
    let mut profile = Profile::load(&profile).unwrap();
    let class = profile.class("h100").unwrap().clone();
    // Loaded from the start: the client is told not to retry a 503.
    for m in &mut profile.models {
        m.cost.iter_mut().for_each(|c| c.load_s = 0.0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let served = Served {
            name: "emu".into(),
            model: "llama-3.1-8b".into(),
        };
        let emu = Emulator::with_models(
            Node::spawn(class),
            served,
            Adapters::new(profile.lora.clone()),
            Models::new(&profile.models, "h100"),
        );
        tokio::spawn(serve(l, emu));
        addr
    });
    let out = Command::new(&python)
        .args(["-c", SCRIPT, &format!("http://{addr}/v1")])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{stderr}"
    );
}
