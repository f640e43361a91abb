//! `memtrace agent`: every Go process on the host, continuously (see
//! `agent::session` for the policy). This module parses the arguments and
//! wires the engine, the policy and the HTTP API together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::engine::session::{Session, Targets};
use crate::engine::Options;
use crate::front::agent::metrics::SelfUsage;
use crate::front::agent::pods::PodSource;
use crate::front::agent::session::{AgentPolicy, Filters, Snapshots};
use crate::front::agent::{self, Shared};
use crate::front::push::pyroscope::{Auth, Store};
use crate::front::push::{self, Destination, PushConfig, Pusher};
use crate::host::procfs;
use crate::model::lens::Lens;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub session: super::SessionArgs,
    /// pprof label keys whose values may appear on /metrics
    /// (`memtrace_process_label_growth_bytes`); none by default, as label
    /// values are tenants' data and may be secrets. Profiles and reports
    /// keep every key.
    #[arg(long, value_delimiter = ',', value_name = "KEY", value_parser = super::label_key)]
    pub metric_label_keys: Vec<String>,
    /// Length of each rolling profile window, seconds.
    #[arg(long, default_value_t = 60)]
    pub window: u64,
    /// Address of the HTTP endpoint (/metrics, /healthz, /profiles).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Directory for automatic snapshots and the last window at shutdown.
    #[arg(long, default_value = "memtrace-agent")]
    pub out: PathBuf,
    /// Snapshot a process whose RSS grew by at least this many MiB...
    #[arg(long, default_value_t = 256)]
    pub snapshot_growth_mib: u64,
    /// ...within this many seconds.
    #[arg(long, default_value_t = 300)]
    pub snapshot_period: u64,
    /// Snapshot a process whose memory cgroup crosses this percent of its
    /// limit (0: never), at most once per --snapshot-period.
    #[arg(long, default_value_t = 90.0, value_parser = pct)]
    pub snapshot_limit_pct: f64,
    /// Reports kept on disk in each of snapshots/ and oom/ (oldest removed
    /// first); last-window/ holds only the last shutdown's.
    #[arg(long, default_value_t = 20)]
    pub max_snapshots: usize,
    /// Trace only processes whose cgroup path starts with this.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Trace only executables with this file name (repeatable).
    #[arg(long = "exe")]
    pub exes: Vec<String>,
    /// The Kubernetes API server (in a pod: https://kubernetes.default.svc),
    /// to label processes with pod namespace and name. Only this node's
    /// pods are listed (--node-name), which needs RBAC `pods` `list` alone.
    #[arg(long, value_name = "URL", conflicts_with = "kubelet")]
    pub kube_api: Option<String>,
    /// The node's kubelet (e.g. https://NODE_IP:10250), asked for /pods
    /// instead of the API server. Its authorization is `nodes/proxy` (exec
    /// on every pod) unless the cluster grants the fine-grained `nodes/pods`:
    /// prefer --kube-api.
    #[arg(long, value_name = "URL")]
    pub kubelet: Option<String>,
    /// Bearer token for the API server or kubelet, read from this file
    /// before each request (projected tokens rotate).
    #[arg(
        long,
        alias = "kubelet-token-file",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kube_token_file: PathBuf,
    /// The CA the API server's (or kubelet's) certificate is checked against.
    #[arg(
        long,
        alias = "kubelet-ca-file",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub kube_ca_file: PathBuf,
    /// Do not verify the API server's (or kubelet's) certificate.
    #[arg(long, alias = "kubelet-insecure-tls")]
    pub kube_insecure_tls: bool,
    /// Require `Authorization: Bearer TOKEN` on /metrics and /profiles,
    /// TOKEN being this file's content (/healthz stays open).
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Allow a --listen address other than loopback without a token.
    #[arg(long)]
    pub insecure_listen: bool,
    /// Push every window's profiles to this Grafana Pyroscope (base URL).
    #[arg(long, value_name = "URL")]
    pub pyroscope: Option<String>,
    /// Pyroscope tenant, sent as X-Scope-OrgID.
    #[arg(long, value_name = "ID")]
    pub pyroscope_tenant: Option<String>,
    /// Bearer token for Pyroscope, read from this file.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "pyroscope_basic_auth_file"
    )]
    pub pyroscope_token_file: Option<PathBuf>,
    /// Basic auth for Pyroscope: a file holding `user:password`.
    #[arg(long, value_name = "FILE")]
    pub pyroscope_basic_auth_file: Option<PathBuf>,
    /// Disk kept for profiles Pyroscope has not taken yet (an outage), MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub pyroscope_spool_mib: u64,
    #[command(flatten)]
    pub otlp: super::OtlpArgs,
    /// Disk kept for OTLP exports the collector has not taken yet, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub otlp_spool_mib: u64,
    /// Distinct stacks kept per process (its memory bound); later new
    /// stacks are counted under one `[stack unavailable: over the
    /// per-process stack cap]` frame and in memtrace_stacks_capped_total.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub max_stacks_per_process: usize,
    /// Also profile allocations (the runtime's sampled memory profile):
    /// served and pushed as `alloc`. A program keeps its own
    /// MemProfileRate (Go's default: one sample per 512 KiB); one that set
    /// it to 0 is sampled at 64 KiB while traced, and its 0 is written
    /// back when the agent stops, or by the agent's guardian process if
    /// the agent is killed.
    #[arg(long)]
    pub alloc: bool,
    /// Seconds the engine may go without completing a loop before
    /// `/healthz` fails (so the kubelet restarts a stuck agent).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub stall_secs: u64,
    /// The node's name for the `node` label (default: $NODE_NAME, else the
    /// host name).
    #[arg(long)]
    pub node_name: Option<String>,
}

/// A secret read from a file: trimmed, and not empty.
fn read_secret(what: &str, f: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(f)
        .with_context(|| format!("cannot read {what} {}", f.display()))?;
    let s = s.trim().to_string();
    anyhow::ensure!(!s.is_empty(), "{what} {} is empty", f.display());
    Ok(s)
}

/// The push configuration the flags ask for.
fn push_config(args: &AgentArgs) -> anyhow::Result<Option<PushConfig>> {
    let Some(url) = &args.pyroscope else {
        return Ok(None);
    };
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "--pyroscope {url}: give the store's http(s) base URL, e.g. http://pyroscope:4040"
    );
    let auth = match (&args.pyroscope_token_file, &args.pyroscope_basic_auth_file) {
        (Some(f), _) => Auth::Bearer(read_secret("--pyroscope-token-file", f)?),
        (None, Some(f)) => {
            let s = read_secret("--pyroscope-basic-auth-file", f)?;
            let (user, password) = s.split_once(':').with_context(|| {
                format!(
                    "--pyroscope-basic-auth-file {}: write it as user:password",
                    f.display()
                )
            })?;
            Auth::Basic {
                user: user.into(),
                password: password.into(),
            }
        }
        (None, None) => Auth::None,
    };
    let dest = Destination::Pyroscope(Store {
        url: url.clone(),
        tenant: args.pyroscope_tenant.clone(),
        auth,
    });
    Ok(Some(PushConfig {
        spool: push::default_spool(&args.out, &dest),
        dest,
        spool_max_bytes: args.pyroscope_spool_mib << 20,
    }))
}

/// The OTLP export configuration the flags ask for.
fn otlp_config(args: &AgentArgs) -> anyhow::Result<Option<PushConfig>> {
    let Some(endpoint) = args.otlp.endpoint()? else {
        return Ok(None);
    };
    let dest = Destination::Otlp(endpoint);
    Ok(Some(PushConfig {
        spool: push::default_spool(&args.out, &dest),
        dest,
        spool_max_bytes: args.otlp_spool_mib << 20,
    }))
}

/// Where pod names come from: the API server, the kubelet, or nowhere.
fn pod_source(args: &AgentArgs) -> anyhow::Result<Option<PodSource>> {
    let (token, ca, insecure) = (
        &args.kube_token_file,
        &args.kube_ca_file,
        args.kube_insecure_tls,
    );
    Ok(match (&args.kube_api, &args.kubelet) {
        (Some(url), _) => Some(PodSource::api_server(
            url,
            &node_name(args),
            token,
            ca,
            insecure,
        )?),
        (None, Some(url)) => Some(PodSource::kubelet(url, token, ca, insecure)?),
        (None, None) => None,
    })
}

fn node_name(args: &AgentArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Serves the HTTP API on its own thread and runtime, so a scrape never
/// waits on a window's rendering or on the kubelet.
fn serve(listener: std::net::TcpListener, ctx: agent::http::Ctx) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("memtrace-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("an HTTP runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                agent::http::serve(listener, agent::http::router(ctx)).await;
            });
        })?;
    Ok(())
}

fn self_usage() -> SelfUsage {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // utime and stime are fields 14 and 15 (11 and 12 after ')').
            Some(f.get(10)? + f.get(11)?)
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    SelfUsage {
        cpu_seconds: ticks as f64 / hz,
        rss_bytes: procfs::read_status(std::process::id()).map_or(0, |s| s.vm_rss),
    }
}

/// The engine's options for the agent's flags.
fn engine_options(args: &AgentArgs) -> Options {
    let mut lenses = vec![Lens::Rss, Lens::Goroutines];
    if args.alloc {
        lenses.push(Lens::Alloc);
    }
    let mut opts = args.session.options(lenses);
    opts.per_binary = true;
    opts.discovery = true;
    opts.max_stacks_per_process = Some(args.max_stacks_per_process.max(1));
    opts
}

/// Creates `out`. What the agent writes holds every pod's stacks and label
/// values, so only its own user may read it: files 0600, directories 0700.
fn private_out(out: &std::path::Path) -> anyhow::Result<()> {
    // SAFETY: umask only sets this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            out.display()
        )
    })
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.window >= 1, "--window must be at least 1 second");
    let opts = engine_options(&args);
    private_out(&args.out)?;
    let token = match &args.auth_token_file {
        Some(f) => Some(read_secret("--auth-token-file", f)?),
        None => None,
    };
    anyhow::ensure!(
        token.is_some() || args.listen.ip().is_loopback() || args.insecure_listen,
        "--listen {} is reachable from other hosts and nothing guards it: give --auth-token-file, or --insecure-listen to serve anyway",
        args.listen
    );
    let pods_source = pod_source(&args)?;
    let (pyroscope, otlp) = (push_config(&args)?, otlp_config(&args)?);
    let listener = std::net::TcpListener::bind(args.listen).with_context(|| {
        format!(
            "cannot listen on {}: choose another address with --listen",
            args.listen
        )
    })?;
    // The guardian (it writes back what the agent wrote into targets and
    // continues any it held, should the agent be SIGKILLed or OOM-killed)
    // is forked here, before any thread; SIGTERM from here on (while the
    // pushers replay their spools and every process is attached) stops the
    // agent cleanly once it runs.
    let mut session = Session::start(opts, Targets::Discover)?;
    let start = |c: Option<PushConfig>, what: &str| {
        c.map(Pusher::start)
            .transpose()
            .with_context(|| format!("starting the {what}"))
    };
    let pusher = start(pyroscope, "Pyroscope pusher")?;
    let otlp = start(otlp, "OTLP exporter")?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let heartbeat = Arc::new(agent::Heartbeat::default());
    serve(
        listener,
        agent::http::Ctx {
            shared: shared.clone(),
            usage: self_usage,
            token: token.map(Arc::from),
            push: pusher.as_ref().map(Pusher::stats_handle),
            otlp: otlp.as_ref().map(Pusher::stats_handle),
            heartbeat: heartbeat.clone(),
            stall: std::time::Duration::from_secs(args.stall_secs.max(1)),
        },
    )?;
    eprintln!(
        "memtrace: agent: serving http://{}/metrics, /profiles; windows of {} s; snapshots under {}",
        args.listen,
        args.window,
        args.out.join("snapshots").display()
    );
    let mut policy = AgentPolicy::new(
        args.window,
        Filters {
            cgroup: args.cgroup.clone(),
            exes: args.exes.clone(),
        },
        Snapshots {
            dir: args.out.join("snapshots"),
            period_secs: args.snapshot_period,
            growth_bytes: args.snapshot_growth_mib << 20,
            keep: args.max_snapshots,
            limit_pct: args.snapshot_limit_pct,
            oom_dir: args.out.join("oom"),
        },
        args.out.join("last-window"),
        shared,
        pods_source,
    );
    policy.pusher = pusher;
    policy.otlp = otlp;
    policy.heartbeat = heartbeat;
    policy.node = node_name(&args);
    policy.metric_label_keys = args.metric_label_keys.clone();
    // Processes already running; later ones arrive through exec events.
    policy.scan(session.engine_mut());
    session.run(&mut policy)?;
    let engine = session.engine_mut();
    engine.drain();
    policy.end_window(engine, true);
    let traced = policy.shared.lock().expect("agent state").discovered;
    say_stopping(&args.out.join("last-window"), traced);
    session.finish();
    Ok(())
}

/// The agent's last line: where its last window went, if anywhere.
/// The agent's last line: where the last window went, and how many Go
/// processes it traced in all.
fn say_stopping(last: &std::path::Path, traced: u64) {
    let plural = if traced == 1 { "" } else { "es" };
    if last.exists() {
        eprintln!(
            "memtrace: agent: stopping after tracing {traced} Go process{plural}; last window written under {}",
            last.display()
        );
    } else if traced > 0 {
        eprintln!(
            "memtrace: agent: stopping after tracing {traced} Go process{plural}; none runs now, so there is no last window"
        );
    } else {
        eprintln!("memtrace: agent: stopping; no Go process was traced, no last window");
    }
}

/// A percentage from 0 to 100.
fn pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number: give a percent such as 90"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is not a percent from 0 to 100"));
    }
    Ok(v)
}
