//! `memtrace agent`: every Go process on the host, continuously. Finds Go
//! programs at start (a /proc scan) and as they exec (a `sched_process_exec`
//! tracepoint), probes each binary once (uprobes on the inode, for all
//! processes, filtered in the kernel by the TARGETS pid set), keeps rolling
//! rss and goroutines profiles per process, serves them with metrics over
//! HTTP, and writes a full snapshot when a process's RSS keeps growing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::agent::{self, metrics::SelfUsage, watch::GrowthWatch, ProcState, Rendered, Shared};
use crate::aggregate::{Aggregator, GoroutineAgg, RssAgg, Thp};
use crate::cgroup;
use crate::decode::{Op, Resolver};
use crate::goruntime::GoBinary;
use crate::lens::Lens;
use crate::loader::{Links, Tracer};
use crate::procfs;
use crate::report;
use crate::symbolize::{Image, Symbolizer};

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

/// A client for the kubelet's `/pods`.
struct Kubelet {
    url: String,
    http: ureq::Agent,
    token: Option<String>,
    /// Last refresh attempt, and whether the last one failed (logged once).
    last: Option<Instant>,
    failing: bool,
}

/// Accepts any server certificate (`--kubelet-insecure-tls`), still checking
/// the handshake signatures.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Kubelet {
    fn new(args: &AgentArgs) -> anyhow::Result<Option<Self>> {
        let Some(url) = &args.kubelet else {
            return Ok(None);
        };
        let mut builder = ureq::AgentBuilder::new().timeout(Duration::from_secs(3));
        if args.kubelet_insecure_tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS set-up for the kubelet")?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth();
            builder = builder.tls_config(Arc::new(tls));
        }
        let token = std::fs::read_to_string(&args.kubelet_token_file)
            .ok()
            .map(|t| t.trim().to_string());
        Ok(Some(Self {
            url: url.trim_end_matches('/').to_string(),
            http: builder.build(),
            token,
            last: None,
            failing: false,
        }))
    }

    fn pods(&mut self) -> anyhow::Result<HashMap<String, agent::kubelet::PodMeta>> {
        use std::io::Read as _;
        self.last = Some(Instant::now());
        let mut req = self.http.get(&format!("{}/pods", self.url));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call()?;
        let mut body = Vec::new();
        resp.into_reader().take(256 << 20).read_to_end(&mut body)?;
        Ok(agent::kubelet::parse_pods(&body)?)
    }
}

/// A binary (by device and inode) and what was decided about it.
struct BinEntry {
    /// `None`: not a Go binary memtrace can trace (reason logged once).
    bin: Option<Arc<GoBinary>>,
    links: Option<Links>,
    pids: HashSet<u32>,
}

struct Target {
    pid: u32,
    key: (u64, u64),
    exe: PathBuf,
    image: Image,
    watch: GrowthWatch,
}

struct Agent {
    args: AgentArgs,
    tracer: Tracer,
    resolver: Resolver,
    agg: Aggregator,
    sym: Symbolizer,
    bins: HashMap<(u64, u64), BinEntry>,
    targets: HashMap<u32, Target>,
    shared: Arc<Mutex<Shared>>,
    thp: Thp,
    started: Instant,
    window_start: Instant,
    me: u32,
    kubelet: Option<Kubelet>,
    pods: HashMap<String, agent::kubelet::PodMeta>,
    /// Snapshots triggered (pid → RSS growth), written when the window
    /// ends so they hold a whole window of attribution.
    due: HashMap<u32, u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

impl Agent {
    fn new_aggregator(thp: Thp) -> Aggregator {
        Aggregator {
            alloc: None,
            mmap: None,
            rss: Some(RssAgg::new(thp)),
            goroutines: Some(GoroutineAgg::default()),
            gc: Default::default(),
            events: 0,
        }
    }

    /// Starts tracing `pid` if it runs a Go binary that passes the filters.
    fn consider(&mut self, pid: u32) {
        if pid == self.me || self.targets.contains_key(&pid) {
            return;
        }
        let via = procfs::proc_dir(pid).join("exe");
        let Ok(meta) = std::fs::metadata(&via) else {
            return; // kernel thread, gone, or not ours to read
        };
        let Ok(exe) = std::fs::read_link(&via) else {
            return;
        };
        let name = exe
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .unwrap_or_default();
        if !self.args.exes.is_empty() && !self.args.exes.contains(&name) {
            return;
        }
        let cg = std::fs::read_to_string(procfs::proc_dir(pid).join("cgroup"))
            .ok()
            .and_then(|t| cgroup::path_from_proc(&t))
            .unwrap_or_default();
        if let Some(prefix) = &self.args.cgroup {
            if !cg.starts_with(prefix.as_str()) {
                return;
            }
        }
        let key = (meta.dev(), meta.ino());
        let entry = self.bins.entry(key).or_insert_with(|| {
            let bin = match GoBinary::open(&via) {
                Ok(b) => Some(Arc::new(b)),
                Err(crate::error::TargetError::NotGo(_)) => None,
                Err(e) => {
                    eprintln!(
                        "memtrace: agent: skipping {} (pid {pid}): {e}",
                        exe.display()
                    );
                    None
                }
            };
            BinEntry {
                bin,
                links: None,
                pids: HashSet::new(),
            }
        });
        let Some(bin) = entry.bin.clone() else {
            return;
        };
        if entry.links.is_none() {
            // One set of uprobes per binary, for every process running it.
            let attached = (|| -> anyhow::Result<()> {
                if let Ok(points) = &bin.gc {
                    self.tracer.attach_gc(points, &via, 0)?;
                }
                let points = bin
                    .goroutines
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                self.tracer.attach_goroutines(points, &via, 0)?;
                Ok(())
            })();
            let links = self.tracer.take_links();
            if let Err(e) = attached {
                eprintln!("memtrace: agent: cannot probe {}: {e:#}", exe.display());
                self.tracer.detach(links);
                self.bins.get_mut(&key).expect("present").bin = None;
                return;
            }
            self.bins.get_mut(&key).expect("present").links = Some(links);
        }
        let maps = procfs::read_maps(pid);
        let image = Image {
            exe: exe.clone(),
            maps,
            root: Some(procfs::proc_dir(pid).join("root")),
        };
        let mut config = memtrace_common::TargetConfig::default();
        if let Ok(points) = &bin.gc {
            let exe_maps: Vec<_> = image
                .maps
                .iter()
                .flatten()
                .filter(|m| m.path.as_deref() == Some(exe.as_path()))
                .cloned()
                .collect();
            let addr = |a: Option<u64>| a.and_then(|a| bin.runtime_addr(a, &exe_maps)).unwrap_or(0);
            config.heap_live = addr(points.heap_live);
            config.heap_goal = addr(points.heap_goal);
            if bin.allgs.is_some() {
                if let Some(gs) = self.agg.goroutines.as_mut() {
                    if let Err(e) = super::goroutines::add_existing(
                        pid,
                        &bin,
                        &exe_maps,
                        &mut self.resolver,
                        gs,
                    ) {
                        log::warn!("pid {pid}: existing goroutines: {e:#}");
                    }
                }
            }
        }
        if let Err(e) = self.tracer.add_target(pid, config) {
            eprintln!("memtrace: agent: cannot trace pid {pid}: {e}");
            return;
        }
        self.bins.get_mut(&key).expect("present").pids.insert(pid);
        self.sym.add_go_binary(&exe, bin.table.clone());
        let labels = cgroup::labels(&cg);
        if labels
            .pod_uid
            .as_ref()
            .is_some_and(|u| !self.pods.contains_key(u))
        {
            self.refresh_pods(false);
        }
        let pod = labels
            .pod_uid
            .as_ref()
            .and_then(|u| self.pods.get(u))
            .cloned();
        eprintln!(
            "memtrace: agent: tracing pid {pid} ({}, {}{}{})",
            exe.display(),
            bin.go_version,
            labels
                .pod_uid
                .as_deref()
                .map_or(String::new(), |u| format!(", pod {u}")),
            labels
                .container_id
                .as_deref()
                .map_or(String::new(), |c| format!(
                    ", container {}",
                    &c[..12.min(c.len())]
                )),
        );
        let mut shared = self.shared.lock().expect("agent state");
        shared.discovered += 1;
        shared.procs.insert(
            pid,
            ProcState {
                pid,
                exe: exe.display().to_string(),
                go_version: bin.go_version.clone(),
                labels,
                pod,
                vmrss: procfs::read_status(pid).map_or(0, |s| s.vm_rss),
                ..Default::default()
            },
        );
        drop(shared);
        self.targets.insert(
            pid,
            Target {
                pid,
                key,
                exe,
                image,
                watch: GrowthWatch::default(),
            },
        );
    }

    /// Re-reads the kubelet's pods (at most every 5 s) and relabels.
    fn refresh_pods(&mut self, force: bool) {
        let Some(k) = self.kubelet.as_mut() else {
            return;
        };
        if !force && k.last.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        match k.pods() {
            Ok(pods) => {
                if k.failing {
                    eprintln!("memtrace: agent: kubelet {} reachable again", k.url);
                }
                k.failing = false;
                self.pods = pods;
            }
            Err(e) => {
                if !k.failing {
                    eprintln!(
                        "memtrace: agent: kubelet {} not reachable ({e:#}); pods keep their UID only",
                        k.url
                    );
                }
                k.failing = true;
            }
        }
        let mut shared = self.shared.lock().expect("agent state");
        for p in shared.procs.values_mut() {
            p.pod = p
                .labels
                .pod_uid
                .as_ref()
                .and_then(|u| self.pods.get(u))
                .cloned();
        }
    }

    /// Stops tracing `pid` and forgets its data; a binary with no process
    /// left loses its probes.
    fn remove(&mut self, pid: u32) {
        let Some(t) = self.targets.remove(&pid) else {
            return;
        };
        self.tracer.remove_target(pid);
        self.agg.forget(pid);
        self.resolver.forget(pid);
        if let Some(entry) = self.bins.get_mut(&t.key) {
            entry.pids.remove(&pid);
            if entry.pids.is_empty() {
                if let Some(links) = entry.links.take() {
                    self.tracer.detach(links);
                }
                // Forget the binary: its inode may be reused by another file.
                self.bins.remove(&t.key);
            }
        }
        let mut shared = self.shared.lock().expect("agent state");
        shared.procs.remove(&pid);
        for lens in agent::LENSES {
            shared.profiles.remove(&(pid, *lens));
        }
        eprintln!("memtrace: agent: pid {pid} exited");
    }

    /// The rss and goroutines profiles of `pid` from what is aggregated now.
    fn profiles_of(&mut self, pid: u32, secs: f64) -> Vec<crate::render::Profile> {
        let Some(t) = self.targets.get(&pid) else {
            return Vec::new();
        };
        let name = t
            .exe
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let images = HashMap::from([(pid, (name.clone(), t.image.clone()))]);
        let desc = format!("{name} (pid {pid})");
        let resolver = &self.resolver;
        let stack_of = |id: u32| resolver.frames(id as i32).map(<[u64]>::to_vec);
        let mut out = Vec::new();
        let by_lens = [
            (Lens::Rss, self.agg.rss.as_ref().map(|r| r.by_stack())),
            (
                Lens::Goroutines,
                self.agg.goroutines.as_ref().map(|g| g.by_stack()),
            ),
        ];
        for (lens, cells) in by_lens {
            let mut cells = cells.unwrap_or_default();
            cells.retain(|k, _| k.0 == pid);
            out.push(report::build_profile(
                lens,
                &cells,
                &images,
                &stack_of,
                &mut self.sym,
                secs,
                desc.clone(),
            ));
        }
        out
    }

    fn render(p: &crate::render::Profile) -> anyhow::Result<Rendered> {
        Ok(Rendered {
            svg: crate::render::svg::render(p)?,
            folded: crate::render::folded::render(p),
            pprof: crate::render::pprof::render(p)?,
        })
    }

    /// Ends the window: renders every process's profiles for the API (and,
    /// at shutdown, to disk), updates metrics, starts a new window.
    fn end_window(&mut self, last: bool) -> anyhow::Result<()> {
        self.write_due_snapshots();
        let secs = self.window_start.elapsed().as_secs_f64();
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        let counters = self.tracer.counters();
        let mut gc_by_pid: HashMap<u32, u64> = HashMap::new();
        for c in &self.agg.gc.cycles {
            *gc_by_pid.entry(c.pid).or_default() += 1;
        }
        self.agg.gc.cycles.clear();
        for pid in pids {
            let profiles = self.profiles_of(pid, secs);
            if last {
                let dir = self.args.out.join("last-window").join(pid.to_string());
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for p in &profiles {
                    report::write_profile(&dir, p)?;
                }
            }
            let goroutines = self
                .agg
                .goroutines
                .as_ref()
                .map_or(0, |g| g.live_count(pid) as u64);
            let mut rendered = Vec::new();
            for p in &profiles {
                rendered.push((p.lens.parse::<Lens>().ok(), Self::render(p)?));
            }
            let rss = &profiles[0];
            let mut top: Vec<(String, u64)> = rss
                .samples
                .iter()
                .map(|s| (s.frames.last().cloned().unwrap_or_default(), s.value))
                .collect();
            top.sort_by_key(|t| std::cmp::Reverse(t.1));
            top.truncate(agent::TOP_SERIES);
            let mut shared = self.shared.lock().expect("agent state");
            for (lens, r) in rendered {
                if let Some(lens) = lens {
                    shared.profiles.insert((pid, lens.name()), Arc::new(r));
                }
            }
            if let Some(p) = shared.procs.get_mut(&pid) {
                p.growth_bytes = rss.total();
                p.top = top;
                p.goroutines = goroutines;
                p.gc_cycles += gc_by_pid.get(&pid).copied().unwrap_or(0);
                p.window_end = Some(unix_now());
            }
        }
        let mut shared = self.shared.lock().expect("agent state");
        shared.windows += 1;
        shared.ring_drops = counters[memtrace_common::Counter::RingbufDrops as usize];
        shared.stack_errors = counters[memtrace_common::Counter::StackErrors as usize];
        drop(shared);
        // rss is per window; live goroutines carry over.
        self.agg.rss = Some(RssAgg::new(self.thp));
        self.window_start = Instant::now();
        Ok(())
    }

    /// Writes a `record`-style report of `pid` now, without ending the window.
    fn snapshot(&mut self, pid: u32, growth: u64) -> anyhow::Result<PathBuf> {
        let secs = self.window_start.elapsed().as_secs_f64();
        let root = self.args.out.join("snapshots");
        let dir = root.join(format!("{pid}-{}", unix_now()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let profiles = self.profiles_of(pid, secs);
        let mut lenses = serde_json::Map::new();
        for p in &profiles {
            report::write_profile(&dir, p)?;
            let s = crate::render::summary::lens_summary(p, Default::default());
            lenses.insert(p.lens.clone(), serde_json::to_value(s)?);
        }
        let state = self
            .shared
            .lock()
            .expect("agent state")
            .procs
            .get(&pid)
            .cloned()
            .unwrap_or_default();
        let summary = serde_json::json!({
            "trigger": {
                "rss_growth_bytes": growth,
                "period_secs": self.args.snapshot_period,
                "threshold_bytes": self.args.snapshot_growth_mib << 20,
            },
            "targets": [{
                "pid": pid,
                "exe": state.exe,
                "go_version": state.go_version,
                "cgroup": state.labels.cgroup,
                "pod_uid": state.labels.pod_uid,
                "container_id": state.labels.container_id,
                "vmrss": state.vmrss,
            }],
            "window_secs": secs,
            "lenses": lenses,
        });
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_vec_pretty(&summary)?,
        )?;
        prune(&root, self.args.max_snapshots);
        let mut shared = self.shared.lock().expect("agent state");
        shared.snapshots += 1;
        if let Some(p) = shared.procs.get_mut(&pid) {
            p.snapshots += 1;
        }
        Ok(dir)
    }

    /// Once a second: RSS samples, snapshot triggers, and exits the exit
    /// tracepoint might have raced with.
    fn tick(&mut self) {
        let t = self.started.elapsed().as_secs_f64();
        let period = self.args.snapshot_period as f64;
        let threshold = self.args.snapshot_growth_mib << 20;
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for tg in self.targets.values_mut() {
            if !procfs::is_alive(tg.pid) {
                gone.push(tg.pid);
                continue;
            }
            if let Some(m) = procfs::read_maps(tg.pid) {
                tg.image.maps = Some(m);
            }
            let Some(st) = procfs::read_status(tg.pid) else {
                continue;
            };
            if let Some(p) = self
                .shared
                .lock()
                .expect("agent state")
                .procs
                .get_mut(&tg.pid)
            {
                p.vmrss = st.vm_rss;
            }
            if let Some(g) = tg.watch.sample(t, st.vm_rss, period, threshold) {
                due.push((tg.pid, g));
            }
        }
        for pid in gone {
            self.remove(pid);
        }
        for (pid, growth) in due {
            eprintln!(
                "memtrace: agent: pid {pid}: RSS grew {} in {} s; snapshot at the end of this window",
                report::human_bytes(growth),
                self.args.snapshot_period
            );
            self.due.insert(pid, growth);
        }
    }

    /// Writes the snapshots triggered during the window that is ending.
    fn write_due_snapshots(&mut self) {
        let due: Vec<(u32, u64)> = self.due.drain().collect();
        for (pid, growth) in due {
            if !self.targets.contains_key(&pid) {
                continue; // exited meanwhile
            }
            match self.snapshot(pid, growth) {
                Ok(dir) => eprintln!(
                    "memtrace: agent: snapshot of pid {pid}: RSS grew {} in {} s → {}",
                    report::human_bytes(growth),
                    self.args.snapshot_period,
                    dir.display()
                ),
                Err(e) => eprintln!("memtrace: agent: snapshot of pid {pid} failed: {e:#}"),
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        // Lifecycle events are handled after the batch: starting to trace a
        // process reads /proc and may attach probes.
        let mut lifecycle = Vec::new();
        while let Some(item) = ring.next() {
            match self.resolver.feed(&item) {
                Ok(Some(r)) => match r.op {
                    Op::ProcExec | Op::ProcExit => lifecycle.push((r.op, r.key.0)),
                    _ => self.agg.apply(&r),
                },
                Ok(None) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        for (op, pid) in lifecycle {
            // A target that execs runs another program now: start over.
            self.remove(pid);
            if op == Op::ProcExec {
                self.consider(pid);
            }
        }
    }
}

/// Keeps the `keep` newest snapshot directories under `root`.
fn prune(root: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut dirs: Vec<(SystemTime, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep);
    for (_, d) in dirs.into_iter().take(excess) {
        let _ = std::fs::remove_dir_all(d);
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.window >= 1, "--window must be at least 1 second");
    let mut tracepoints: Vec<(&'static str, &str, &str)> = Lens::Rss.tracepoints().to_vec();
    tracepoints.push(("proc_exec", "sched", "sched_process_exec"));
    tracepoints.push(("proc_exit", "sched", "sched_process_exit"));
    let tp_paths: Vec<String> = tracepoints
        .iter()
        .map(|(_, c, n)| format!("{c}/{n}"))
        .collect();
    crate::preflight::check(&tp_paths.iter().map(String::as_str).collect::<Vec<_>>())?;
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            args.out.display()
        )
    })?;
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
        let mut tracer = Tracer::load()?;
        tracer.attach_tracepoints(&tracepoints)?;
        let ring = tracer.take_ring()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = agent::http::router(shared.clone(), self_usage);
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let thp = Thp::parse(
            &std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .unwrap_or_default(),
        );
        eprintln!(
            "memtrace: agent: serving http://{}/metrics, /profiles; windows of {} s; snapshots under {}",
            args.listen,
            args.window,
            args.out.join("snapshots").display()
        );
        let mut a = Agent {
            tracer,
            resolver: Resolver::default(),
            agg: Agent::new_aggregator(thp),
            sym: Symbolizer::default(),
            bins: HashMap::new(),
            targets: HashMap::new(),
            shared,
            thp,
            started: Instant::now(),
            window_start: Instant::now(),
            me: std::process::id(),
            kubelet: Kubelet::new(&args)?,
            pods: HashMap::new(),
            due: HashMap::new(),
            args,
        };
        a.refresh_pods(true);
        // Processes already running; later ones arrive through exec events.
        if let Ok(rd) = std::fs::read_dir("/proc") {
            let pids: Vec<u32> = rd
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for pid in pids {
                a.consider(pid);
            }
        }
        // SAFETY: the ring buffer's fd stays open for as long as AsyncFd owns it.
        let mut ring = unsafe { AsyncFd::register(ring) }.context("polling the ring buffer")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut window = tokio::time::interval(Duration::from_secs(a.args.window));
        window.tick().await;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    a.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    a.drain(ring.get_mut());
                    a.tick();
                }
                _ = window.tick() => {
                    a.drain(ring.get_mut());
                    a.end_window(false)?;
                    a.refresh_pods(false);
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        a.drain(ring.get_mut());
        a.end_window(true)?;
        eprintln!(
            "memtrace: agent: stopping; last window written under {}",
            a.args.out.join("last-window").display()
        );
        server.abort();
        Ok::<(), anyhow::Error>(())
    })
}
