//! Commands that run without a daemon: `run`, `detach`, `agent`,
//! `emulate` and `config check`.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context, Result, bail};
use balancer::{
    config::{Config, DaemonConfig},
    dataplane::{AttachMode, Dataplane, default_pin_dir},
};

use super::{
    args::{
        ConfigCmd, DetachArgs, EmulateArgs, LocalCmd, Output, RunArgs, SchedulingPolicyArg,
        XdpModeArg,
    },
    render,
};

/// Runs a local command.
pub fn run(cmd: LocalCmd, output: Output) -> Result<()> {
    match cmd {
        LocalCmd::Run(args) => run_daemon(args),
        LocalCmd::Detach(args) => detach(args),
        LocalCmd::Agent { listen, once } => agent(listen, once),
        LocalCmd::Emulate(args) => emulate(args),
        LocalCmd::Config(ConfigCmd::Check { file }) => config_check(&file, output),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BALANCER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_daemon(args: RunArgs) -> Result<()> {
    init_tracing();
    // Each connection a route holds costs a descriptor: 1,024 would cap the
    // routes' max_connections long before their configured limit.
    let fds = balancer::http::raise_nofile();
    tracing::info!(fds, "descriptor limit");
    let mut cfg = Config::load(&args.config)?;
    apply_overrides(&mut cfg.daemon, &args);
    balancer::daemon::run(cfg)
}

/// Applies `run`'s flags to the file's daemon settings.
fn apply_overrides(d: &mut DaemonConfig, args: &RunArgs) {
    // Config exposes only the resolved pin directory: it was defaulted iff it
    // is the default for the file's own interface and namespace. Only then
    // does it follow an overridden interface; a pin_dir the file names wins.
    let defaulted = d.pin_dir == pin_dir_for(d);
    let mut repin = false;
    if let Some(i) = &args.iface {
        d.iface = Some(i.clone());
        repin = true;
    }
    if let Some(ns) = &args.netns {
        d.netns = Some(ns.clone());
        repin = true;
    }
    if repin && defaulted {
        d.pin_dir = pin_dir_for(d);
    }
    if let Some(m) = args.xdp_mode {
        d.xdp_mode = match m {
            XdpModeArg::Driver => AttachMode::Driver,
            XdpModeArg::Generic => AttachMode::Generic,
        };
    }
}

/// The default pin directory for `d`'s interface and namespace, as the
/// configuration loader derives it.
fn pin_dir_for(d: &DaemonConfig) -> std::path::PathBuf {
    default_pin_dir(d.iface.as_deref().unwrap_or("none"), d.netns.as_deref())
}

fn detach(args: DetachArgs) -> Result<()> {
    let dir = match (args.config, args.pin_dir, args.iface) {
        (Some(c), _, _) => {
            let cfg = Config::load(&c)?;
            if cfg.daemon.iface.is_none() {
                bail!("{} configures no data plane (no daemon.iface)", c.display());
            }
            cfg.daemon.pin_dir
        }
        (None, Some(d), _) => d,
        (None, None, Some(i)) => default_pin_dir(&i, args.netns.as_deref()),
        _ => bail!(
            "say which data plane: --config FILE, --iface IFACE [--netns NS] or --pin-dir DIR"
        ),
    };
    if !dir.join("link").exists() {
        bail!(
            "no balancer is attached there ({} has no pinned link)",
            dir.display()
        );
    }
    Dataplane::detach(&dir)?;
    println!("detached ({} removed)", dir.display());
    Ok(())
}

fn agent(listen: SocketAddr, once: bool) -> Result<()> {
    init_tracing();
    if once {
        let nvml = balancer::agent::nvml::Nvml::load();
        print!("{}", balancer::agent::render(nvml.as_ref())?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(balancer::agent::serve(listen))
        .with_context(|| format!("serving on {listen}"))
}

fn emulate(args: EmulateArgs) -> Result<()> {
    use balancer::emulate::{node::Node, profile::Profile, server};
    init_tracing();
    let profile = Profile::load(&args.profile)?;
    let class = profile.class(&args.class).cloned().with_context(|| {
        let names: Vec<&str> = profile.classes.iter().map(|c| c.name.as_str()).collect();
        format!(
            "{}: no class {:?} (it has {})",
            args.profile.display(),
            args.class,
            names.join(", ")
        )
    })?;
    let specs = profile
        .select_models(args.models.as_deref(), &class.name)
        .with_context(|| format!("--models, with {}", args.profile.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let served = server::Served {
            name: args.name.unwrap_or_else(|| class.name.clone()),
            model: args.model,
        };
        tracing::info!(class = %class.name, listen = %args.listen, model = %served.model, "emulating");
        let models = balancer::emulate::models::Models::new(&specs, &class.name);
        let node = Node::spawn(class);
        node.set_policy(match args.scheduling_policy {
            SchedulingPolicyArg::Fcfs => balancer::emulate::engine::Policy::Fcfs,
            SchedulingPolicyArg::Priority => balancer::emulate::engine::Policy::Priority,
        });
        node.set_speed(args.speed);
        let adapters = balancer::emulate::adapters::Adapters::new(profile.lora.clone());
        let emu = server::Emulator::with_models(node, served, adapters, models);
        server::serve(listener, emu).await;
        Ok(())
    })
}

fn config_check(file: &Path, output: Output) -> Result<()> {
    let cfg = Config::load(file)?;
    println!("{}", render::config::check(file, &cfg, output));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn daemon(src: &str) -> DaemonConfig {
        match Config::parse(Path::new("t.toml"), src) {
            Ok(c) => c.daemon,
            Err(e) => panic!("test config: {e}"),
        }
    }

    fn args(iface: Option<&str>, netns: Option<&str>) -> RunArgs {
        RunArgs {
            config: PathBuf::from("t.toml"),
            iface: iface.map(Into::into),
            xdp_mode: None,
            netns: netns.map(Into::into),
        }
    }

    #[test]
    fn emulate_names_the_classes_a_profile_has() {
        // The VM suite stages the scenarios away from the checkout.
        let scenarios = std::env::var_os("BALANCER_SCENARIOS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios")
            });
        let profile = scenarios.join("profiles/llama-3.1-8b.toml");
        let err = emulate(EmulateArgs {
            profile,
            class: "tpu".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            model: "m".into(),
            name: None,
            models: None,
            speed: 1.0,
            scheduling_policy: SchedulingPolicyArg::Fcfs,
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("no class \"tpu\" (it has h100, a100, l4, cpu)"),
            "{err}"
        );
    }

    #[test]
    fn iface_override_moves_a_defaulted_pin_dir() {
        let mut d = daemon("[daemon]\niface = \"eth0\"\n");
        apply_overrides(&mut d, &args(Some("eth1"), None));
        assert_eq!(d.iface.as_deref(), Some("eth1"));
        assert_eq!(d.pin_dir, default_pin_dir("eth1", None));
        apply_overrides(&mut d, &args(None, Some("ns1")));
        assert_eq!(d.pin_dir, default_pin_dir("eth1", Some("ns1")));
    }

    #[test]
    fn iface_override_keeps_an_explicit_pin_dir() {
        let mut d = daemon("[daemon]\niface = \"eth0\"\npin_dir = \"/sys/fs/bpf/mine\"\n");
        apply_overrides(&mut d, &args(Some("eth1"), Some("ns1")));
        assert_eq!(d.iface.as_deref(), Some("eth1"));
        assert_eq!(d.netns.as_deref(), Some("ns1"));
        assert_eq!(d.pin_dir, PathBuf::from("/sys/fs/bpf/mine"));
    }

    #[test]
    fn xdp_mode_override() {
        let mut d = daemon("[daemon]\niface = \"eth0\"\nxdp_mode = \"driver\"\n");
        let mut a = args(None, None);
        a.xdp_mode = Some(XdpModeArg::Generic);
        let before = d.pin_dir.clone();
        apply_overrides(&mut d, &a);
        assert_eq!(d.xdp_mode, AttachMode::Generic);
        assert_eq!(d.pin_dir, before);
    }
}
