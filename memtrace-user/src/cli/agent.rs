//! `memtrace agent`: every Go process on the host, continuously (see
//! `agent::session` for the policy). This module parses the arguments and
//! wires the engine, the policy and the HTTP API together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::agent::kubelet::Kubelet;
use crate::agent::metrics::SelfUsage;
use crate::agent::session::{AgentPolicy, Filters, Snapshots};
use crate::agent::{self, Shared};
use crate::engine::host::Procfs;
use crate::engine::{run, Engine, Options};
use crate::kernel::ebpf::Ebpf;
use crate::lens::Lens;
use crate::procfs;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
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
    /// Snapshots kept on disk (oldest removed first).
    #[arg(long, default_value_t = 20)]
    pub max_snapshots: usize,
    /// Trace only processes whose cgroup path starts with this.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Trace only executables with this file name (repeatable).
    #[arg(long = "exe")]
    pub exes: Vec<String>,
    /// The node's kubelet (e.g. https://NODE_IP:10250), to label processes
    /// with pod namespace and name; without it, only the pod UID is known.
    #[arg(long)]
    pub kubelet: Option<String>,
    /// Bearer token for the kubelet, read from this file if it exists.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kubelet_token_file: PathBuf,
    /// Accept the kubelet's self-signed serving certificate.
    #[arg(long)]
    pub kubelet_insecure_tls: bool,
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

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.window >= 1, "--window must be at least 1 second");
    let mut opts = Options::new(vec![Lens::Rss, Lens::Goroutines]);
    opts.per_binary = true;
    opts.discovery = true;
    let tracepoints = opts.tracepoints();
    let paths: Vec<String> = tracepoints.iter().map(|t| t.path()).collect();
    crate::preflight::check(&paths.iter().map(String::as_str).collect::<Vec<_>>())?;
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            args.out.display()
        )
    })?;
    let kubelet = match &args.kubelet {
        Some(url) => Some(Kubelet::new(
            url,
            &args.kubelet_token_file,
            args.kubelet_insecure_tls,
        )?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}: choose another address with --listen",
                    args.listen
                )
            })?;
        let kernel = Ebpf::load(&tracepoints, &crate::preflight::tracefs_dir())?;
        let mut engine = Engine::new(kernel, Procfs, opts);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = agent::http::router(shared.clone(), self_usage);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
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
            },
            args.out.join("last-window"),
            shared,
            kubelet,
        );
        // Processes already running; later ones arrive through exec events.
        policy.scan(&mut engine);
        run::drive(&mut engine, &mut policy).await?;
        engine.drain();
        policy.end_window(&mut engine, true);
        eprintln!(
            "memtrace: agent: stopping; last window written under {}",
            args.out.join("last-window").display()
        );
        engine.finish();
        server.abort();
        Ok::<(), anyhow::Error>(())
    })
}
