//! The agent as a policy over the engine: discovery (every Go process that
//! passes the filters, from a /proc scan and then exec events), rolling
//! windows rendered into the shared state the HTTP API serves, and
//! snapshots of processes whose RSS keeps growing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::pods::{PodMeta, PodSource};
use super::rolling::Rolling;
use super::{ProcState, Shared};
use crate::binary::goruntime::GoBinary;
use crate::engine::discover::{self, Binaries, Found, Parsed, Process};
use crate::engine::run::{Policy, Step};
use crate::engine::{BinaryId, Engine, Host, Lifecycle};
use crate::host::cgroup::{self, CgroupLabels};
use crate::host::procfs;
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;
use crate::model::profile::FrameMode;
use crate::model::report::Report;
use crate::render::report::{human_bytes, write_report};

/// Which processes the agent traces.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Only processes whose cgroup path starts with this.
    pub cgroup: Option<String>,
    /// Only executables with these file names (all when empty).
    pub exes: Vec<String>,
}

impl Filters {
    /// Whether an executable named `name` in cgroup `cg` is traced.
    pub fn admit(&self, name: &str, cg: &str) -> bool {
        let name = name.trim_end_matches(" (deleted)");
        (self.exes.is_empty() || self.exes.iter().any(|e| e == name))
            && self.cgroup.as_deref().is_none_or(|p| cg.starts_with(p))
    }
}

/// Snapshot settings.
#[derive(Clone, Debug)]
pub struct Snapshots {
    pub dir: PathBuf,
    pub period_secs: u64,
    pub growth_bytes: u64,
    pub keep: usize,
    /// Percent of a memory cgroup's limit whose crossing writes a
    /// snapshot (0: off).
    pub limit_pct: f64,
    /// Where the report of an OOM-killed process goes (`PID-UNIXTIME/`).
    pub oom_dir: PathBuf,
}

/// How long one executable may take to parse before it is refused: the
/// largest real Go binaries take about a second.
pub const PARSE_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

pub struct AgentPolicy {
    pub filters: Filters,
    /// Beaten at every tick; `/healthz` fails when it stops.
    pub heartbeat: Arc<super::Heartbeat>,
    pub snapshots: Snapshots,
    /// Where the last window goes at shutdown.
    pub last_window_dir: PathBuf,
    pub shared: Arc<Mutex<Shared>>,
    pub pods_source: Option<PodSource>,
    pods: HashMap<String, PodMeta>,
    rolling: Rolling,
    /// Binaries seen, parsed once each.
    bins: Binaries,
    /// The processes traced now, by binary: a binary is forgotten with its
    /// last process.
    bin_pids: HashMap<BinaryId, HashSet<u32>>,
    labels: HashMap<u32, CgroupLabels>,
    limits: super::limits::LimitTrigger,
    started: Instant,
    last_second: Instant,
    me: u32,
    /// Where profiles are pushed, if anywhere.
    pub pusher: Option<crate::front::push::Pusher>,
    /// Where OTLP profiles go, if anywhere.
    pub otlp: Option<crate::front::push::Pusher>,
    /// The `node` label of pushed profiles.
    pub node: String,
    /// pprof label keys allowed on /metrics (`--metric-label-keys`).
    pub metric_label_keys: Vec<String>,
}

#[path = "session_publish.rs"]
mod publish;
#[path = "session_reports.rs"]
mod reports;

/// The memory cgroup path of `pid` ("" when unreadable).
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(procfs::proc_dir(pid).join("cgroup"))
        .ok()
        .and_then(|t| cgroup::path_from_proc(&t))
        .unwrap_or_default()
}

/// Says why `p` is not traced.
fn skipping(p: &Process, e: &crate::model::error::TargetError) {
    eprintln!(
        "memtrace: agent: skipping {} (pid {}): {e}",
        p.exe.display(),
        p.pid
    );
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AgentPolicy {
    pub fn new(
        window_secs: u64,
        filters: Filters,
        snapshots: Snapshots,
        last_window_dir: PathBuf,
        shared: Arc<Mutex<Shared>>,
        pods_source: Option<PodSource>,
    ) -> Self {
        Self {
            heartbeat: Arc::default(),
            rolling: Rolling::new(
                window_secs as f64,
                snapshots.period_secs as f64,
                snapshots.growth_bytes,
            ),
            filters,
            limits: super::limits::LimitTrigger::new(
                snapshots.limit_pct,
                snapshots.period_secs as f64,
            ),
            snapshots,
            last_window_dir,
            shared,
            pods_source,
            pods: HashMap::new(),
            bins: Binaries::background(PARSE_BUDGET),
            bin_pids: HashMap::new(),
            labels: HashMap::new(),
            started: Instant::now(),
            last_second: Instant::now(),
            me: std::process::id(),
            pusher: None,
            otlp: None,
            node: String::new(),
            metric_label_keys: Vec::new(),
        }
    }

    /// Considers every process running now.
    pub fn scan<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
        self.refresh_pods(true);
        for pid in discover::pids() {
            self.consider(engine, pid);
        }
    }

    /// Starts tracing `pid` if it runs a Go binary that passes the filters.
    fn consider<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>, pid: u32) {
        if pid == self.me || engine.target(pid).is_some() {
            return;
        }
        let Ok(p) = Process::open(pid) else {
            return; // kernel thread, gone, or not ours to read
        };
        if !self.filters.admit(&p.name(), &cgroup_of(pid)) {
            return;
        }
        match self.bins.of(&p) {
            Ok(Found::Go(bin)) => self.start(engine, &p, bin),
            Ok(Found::NotGo | Found::Pending) => {}
            Err(e) => skipping(&p, &e),
        }
    }

    /// Starts the processes whose binaries finished parsing in the
    /// background, if they still run that file.
    fn parsed<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
        for Parsed {
            binary,
            waiting,
            result,
        } in self.bins.poll()
        {
            for p in waiting {
                let same = Process::open(p.pid).is_ok_and(|now| now.binary == binary);
                match &result {
                    _ if !same || engine.target(p.pid).is_some() => {}
                    Ok(Some(bin)) => self.start(engine, &p, bin.clone()),
                    Ok(None) => {}
                    Err(e) => skipping(&p, e),
                }
            }
        }
    }

    /// Traces `p`, which runs `bin`.
    fn start<K: Kernel, H: Host>(
        &mut self,
        engine: &mut Engine<K, H>,
        p: &Process,
        bin: Arc<GoBinary>,
    ) {
        let (pid, binary, exe) = (p.pid, p.binary, p.exe.clone());
        let cg = cgroup_of(pid);
        if let Err(e) = engine.add(p.spec(bin.clone())) {
            eprintln!(
                "memtrace: agent: cannot trace pid {pid} ({}): {e}",
                exe.display()
            );
            if matches!(e, crate::engine::EngineError::Kernel(_)) {
                // The binary cannot be probed: do not try its processes again.
                self.bins.refuse(binary);
            }
            return;
        }
        self.bin_pids.entry(binary).or_default().insert(pid);
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
                labels: labels.clone(),
                pod,
                vmrss: procfs::read_status(pid).map_or(0, |s| s.vm_rss),
                ..Default::default()
            },
        );
        drop(shared);
        self.labels.insert(pid, labels);
    }

    /// Stops tracing `pid` and forgets it; a binary with no process left
    /// is forgotten too (its inode may be reused by another file).
    fn remove<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>, pid: u32) {
        let Some(t) = engine.target(pid) else {
            return;
        };
        let binary = t.probe_key.binary;
        engine.forget(pid);
        self.rolling.forget(pid);
        self.limits.forget(pid);
        self.labels.remove(&pid);
        if let Some(pids) = self.bin_pids.get_mut(&binary) {
            pids.remove(&pid);
            if pids.is_empty() {
                self.bin_pids.remove(&binary);
                self.bins.forget(binary);
            }
        }
        let mut shared = self.shared.lock().expect("agent state");
        shared.procs.remove(&pid);
        shared.profiles.retain(|(p, _), _| *p != pid);
        shared.pages.remove(&pid);
        eprintln!("memtrace: agent: pid {pid} exited");
    }

    /// Re-reads the node's pods (at most every 5 s) and relabels.
    fn refresh_pods(&mut self, force: bool) {
        let Some(k) = self.pods_source.as_mut() else {
            return;
        };
        if !force && k.last.is_some_and(|t| t.elapsed().as_secs() < 5) {
            return;
        }
        match k.pods() {
            Ok(pods) => {
                if k.failing {
                    eprintln!("memtrace: agent: {} reachable again", k.url);
                }
                k.failing = false;
                self.pods = pods;
            }
            Err(e) => {
                if !k.failing {
                    eprintln!(
                        "memtrace: agent: {} not reachable ({e}); pods keep their UID only",
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

    /// Once a second: RSS samples and snapshot triggers.
    fn every_second<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
        let t = self.started.elapsed().as_secs_f64();
        for pid in engine.live_pids() {
            let Some(st) = engine.status(pid) else {
                continue;
            };
            let cgroup = engine.target(pid).and_then(|t| {
                let usage: Vec<(f64, u64)> = t.cgroup_usage.iter().copied().collect();
                Some(crate::host::cgroup::memory::summarize(
                    t.cgroup.clone()?,
                    &usage,
                ))
            });
            if let Some(p) = self.shared.lock().expect("agent state").procs.get_mut(&pid) {
                p.vmrss = st.vm_rss;
                p.cgroup_limit = cgroup.as_ref().and_then(|c| c.reading.limit_bytes);
                p.cgroup_usage = cgroup.as_ref().map(|c| c.reading.usage_bytes);
                p.seconds_to_limit = cgroup.as_ref().and_then(|c| c.seconds_to_limit);
            }
            if let Some(c) = &cgroup {
                self.limits.watch(pid, c.used_pct, c.seconds_to_limit);
            }
            if let Some(c) = cgroup.filter(|c| self.limits.observe(pid, t, c.used_pct)) {
                let why = c.describe(human_bytes);
                let trigger = serde_json::json!({
                    "kind": "limit",
                    "limit_pct": self.snapshots.limit_pct,
                    "cgroup": c,
                });
                self.snapshot(engine, pid, trigger, &why);
            }
            if let Some(g) = self.rolling.observe(pid, t, st.vm_rss) {
                eprintln!(
                    "memtrace: agent: pid {pid}: RSS grew {} in {} s; snapshot at the end of this window",
                    human_bytes(g),
                    self.snapshots.period_secs
                );
            }
        }
    }

    /// What the HTTP state holds about `pid`, copied out.
    fn proc_state(&self, pid: u32) -> Option<super::ProcState> {
        self.shared
            .lock()
            .expect("agent state")
            .procs
            .get(&pid)
            .cloned()
    }

    /// A process's report, with its labels.
    fn report_of<K: Kernel, H: Host>(
        &self,
        engine: &mut Engine<K, H>,
        pid: u32,
        ended_by: EndedBy,
    ) -> Report {
        // What holds the memory at a kill or near a limit is the whole
        // trace's, not the window's growth.
        let mut r = if ended_by.wants_whole_trace() {
            engine.report_whole_trace(&[pid], ended_by)
        } else {
            engine.report(Some(&[pid]), ended_by)
        };
        let state = self.proc_state(pid);
        if let (Some(t), Some(s)) = (r.summary.targets.first_mut(), state) {
            t.labels = Some(serde_json::json!({
                "cgroup": s.labels.cgroup,
                "pod_uid": s.labels.pod_uid,
                "container_id": s.labels.container_id,
                "pod_namespace": s.pod.as_ref().map(|p| p.namespace.clone()),
                "pod_name": s.pod.as_ref().map(|p| p.name.clone()),
            }));
        }
        r
    }

    /// Ends the window: writes due snapshots, renders every process's
    /// profiles for the API (and, at shutdown, to disk), updates metrics,
    /// and starts the next window.
    pub fn end_window<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>, last: bool) {
        let began = Instant::now();
        for (pid, growth) in self.rolling.take_due() {
            if engine.target(pid).is_some() {
                let trigger = serde_json::json!({
                    "kind": "growth",
                    "rss_growth_bytes": growth,
                    "period_secs": self.snapshots.period_secs,
                    "threshold_bytes": self.snapshots.growth_bytes,
                });
                let why = format!(
                    "RSS grew {} in {} s",
                    human_bytes(growth),
                    self.snapshots.period_secs
                );
                self.snapshot(engine, pid, trigger, &why);
            }
        }
        let drops = engine.kernel_counters();
        if last {
            // One shutdown's windows: an earlier run's are replaced, not kept.
            let _ = std::fs::remove_dir_all(&self.last_window_dir);
        }
        for pid in engine.live_pids() {
            let ended_by = if last {
                EndedBy::SigTerm
            } else {
                EndedBy::Window
            };
            let report = self.report_of(engine, pid, ended_by);
            if last {
                let dir = self.last_window_dir.join(pid.to_string());
                if let Err(e) = std::fs::create_dir_all(&dir)
                    .map_err(|e| e.to_string())
                    .and_then(|_| {
                        write_report(&dir, &report, FrameMode::Func).map_err(|e| e.to_string())
                    })
                {
                    eprintln!("memtrace: agent: writing the last window of pid {pid}: {e}");
                }
            }
            self.publish(pid, &report);
        }
        let mut shared = self.shared.lock().expect("agent state");
        shared.windows += 1;
        shared.last_window_secs = began.elapsed().as_secs_f64();
        shared.ring_drops = drops.ringbuf_drops;
        shared.stack_errors = drops.stack_errors;
        shared.capped_stacks = engine.capped_stacks();
        drop(shared);
        reports::say_bus_faults();
        engine.rotate();
        self.refresh_pods(false);
    }
}
impl<K: Kernel, H: Host> Policy<K, H> for AgentPolicy {
    fn on_lifecycle(&mut self, engine: &mut Engine<K, H>, events: Vec<Lifecycle>) {
        for e in events {
            match e {
                // A target that execs runs another program now: start over.
                Lifecycle::Exec(pid) => {
                    self.remove(engine, pid);
                    self.consider(engine, pid);
                }
                Lifecycle::Exit(pid) => self.remove(engine, pid),
                Lifecycle::OomKill(pid) => self.oom_killed(engine, pid),
            }
        }
    }

    fn on_tick(&mut self, engine: &mut Engine<K, H>, exited: &[u32]) -> Step {
        self.heartbeat.beat();
        for &pid in exited {
            self.remove(engine, pid);
        }
        self.parsed(engine);
        self.watch_limits(engine);
        if self.last_second.elapsed().as_secs() >= 1 {
            self.last_second = Instant::now();
            self.every_second(engine);
        }
        if self.rolling.window_over(engine.window_secs()) {
            self.end_window(engine, false);
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_exe_name_and_cgroup_prefix() {
        let all = Filters::default();
        assert!(all.admit("svc", "/anything"));
        let f = Filters {
            cgroup: Some("/kubepods".into()),
            exes: vec!["svc".into()],
        };
        assert!(f.admit("svc", "/kubepods/pod1/c"));
        assert!(f.admit("svc (deleted)", "/kubepods/x"));
        assert!(!f.admit("other", "/kubepods/x"));
        assert!(!f.admit("svc", "/system.slice/x"));
    }
}
