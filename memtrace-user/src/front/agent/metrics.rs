//! The agent's `/metrics`, through the `prometheus-client` crate (OpenMetrics
//! text). The registry is built from the shared state at each scrape, so a
//! process that exited has no series left behind.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{ProcState, Shared};
use crate::front::push::PushStats;

/// The agent's own resource use, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// A label value as the exposition format wants it (the crate writes
/// values as given).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A process's labels: pid, exe and Go version, then where it runs.
fn labels(p: &ProcState) -> Labels {
    let mut l = vec![
        ("pid".to_string(), p.pid.to_string()),
        ("exe".to_string(), escape(&p.exe)),
        ("go_version".to_string(), escape(&p.go_version)),
    ];
    if let Some(c) = &p.labels.container_id {
        l.push(("container_id".into(), escape(c)));
    }
    if let Some(u) = &p.labels.pod_uid {
        l.push(("pod_uid".into(), escape(u)));
    }
    if let Some(pod) = &p.pod {
        l.push(("pod_namespace".into(), escape(&pod.namespace)));
        l.push(("pod_name".into(), escape(&pod.name)));
    }
    l
}

/// A per-process gauge: name, help, and how to read its value.
type ProcGauge = (&'static str, &'static str, fn(&ProcState) -> Option<i64>);

/// A per-process counter.
type ProcCounter = (&'static str, &'static str, fn(&ProcState) -> u64);

const PROC_GAUGES: &[ProcGauge] = &[
    (
        "memtrace_process_rss_bytes",
        "Resident set size (VmRSS) of a traced Go process",
        |p| Some(p.vmrss as i64),
    ),
    (
        "memtrace_process_rss_growth_bytes",
        "Resident memory that became resident in the last window and stayed, attributed to stacks",
        |p| Some(p.growth_bytes as i64),
    ),
    (
        "memtrace_process_rss_net_growth_bytes",
        "Net resident growth in the last window: growth less memory resident before it and released",
        |p| Some(p.net_growth_bytes),
    ),
    (
        "memtrace_process_goroutines",
        "Live goroutines",
        |p| Some(p.goroutines as i64),
    ),
    (
        "memtrace_process_go_heap_live_bytes",
        "The Go heap's live bytes after the last GC cycle (from the GC controller)",
        |p| p.heap_marked.map(|v| v as i64),
    ),
    (
        "memtrace_process_cgroup_limit_bytes",
        "The memory limit of the process's cgroup (the tightest up its hierarchy); no series when unlimited",
        |p| p.cgroup_limit.map(|v| v as i64),
    ),
    (
        "memtrace_process_cgroup_usage_bytes",
        "What the cgroup's limit is held against (memory.current / memory.usage_in_bytes)",
        |p| p.cgroup_usage.map(|v| v as i64),
    ),
    (
        "memtrace_process_cgroup_seconds_to_limit",
        "When the cgroup's usage would reach its limit at the slope of the last 30 s; no series when flat",
        |p| p.seconds_to_limit.map(|v| v.round() as i64),
    ),
    (
        "memtrace_process_go_heap_goal_bytes",
        "The Go heap size the GC aims to stay under, as of the last GC cycle",
        |p| p.heap_goal.map(|v| v as i64),
    ),
];

const PROC_COUNTERS: &[ProcCounter] = &[
    (
        "memtrace_process_gc_cycles",
        "GC cycles completed while traced",
        |p| p.gc_cycles,
    ),
    (
        "memtrace_process_snapshots",
        "Automatic snapshots written for the process",
        |p| p.snapshots,
    ),
];

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Each process's largest growth stacks and label values.
fn register_top(reg: &mut Registry, s: &Shared) {
    let top = Family::<Labels, Gauge>::default();
    for p in s.procs.values() {
        for (rank, (func, bytes)) in p.top.iter().enumerate() {
            let mut l = labels(p);
            l.push(("rank".into(), (rank + 1).to_string()));
            l.push(("function".into(), escape(func)));
            top.get_or_create(&l).set(*bytes as i64);
        }
    }
    reg.register(
        "memtrace_process_top_growth_bytes",
        "The largest resident-growth stacks of the last window, by leaf function (at most 5 per process)",
        top,
    );
    let by_label = Family::<Labels, Gauge>::default();
    for p in s.procs.values() {
        for (key, value, bytes) in &p.label_growth {
            let mut l = labels(p);
            l.push(("label_key".into(), escape(key)));
            l.push(("label_value".into(), escape(value)));
            by_label.get_or_create(&l).set(*bytes as i64);
        }
    }
    reg.register(
        "memtrace_process_label_growth_bytes",
        "Resident growth of the last window by pprof label value (the 5 largest per process; values past 500 per key count as [other])",
        by_label,
    );
}

/// Renders every metric.
/// Delivery figures by destination: the metric prefix (`memtrace_push`
/// for Pyroscope, `memtrace_otlp`), what it delivers to, and its figures.
pub type Deliveries<'a> = [(&'static str, &'static str, &'a PushStats)];

/// Renders every metric.
pub fn render(s: &Shared, me: SelfUsage, deliveries: &Deliveries) -> String {
    let mut reg = Registry::default();
    for (name, help, get) in PROC_GAUGES {
        let fam = Family::<Labels, Gauge>::default();
        for p in s.procs.values() {
            if let Some(v) = get(p) {
                fam.get_or_create(&labels(p)).set(v);
            }
        }
        reg.register(*name, *help, fam);
    }
    for (name, help, get) in PROC_COUNTERS {
        let fam = Family::<Labels, Counter>::default();
        for p in s.procs.values() {
            fam.get_or_create(&labels(p)).inc_by(get(p));
        }
        reg.register(*name, *help, fam);
    }
    register_top(&mut reg, s);
    gauge(
        &mut reg,
        "memtrace_processes",
        "Go processes traced now",
        s.procs.len() as i64,
    );
    counter(
        &mut reg,
        "memtrace_processes_discovered",
        "Go processes the agent started tracing",
        s.discovered,
    );
    counter(
        &mut reg,
        "memtrace_windows",
        "Profile windows completed",
        s.windows,
    );
    let took: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    took.set(s.last_window_secs);
    reg.register(
        "memtrace_window_render_seconds",
        "How long ending the last window took (every process's report, rendered and published)",
        took,
    );
    counter(
        &mut reg,
        "memtrace_snapshots",
        "Automatic snapshots written",
        s.snapshots,
    );
    let by_trigger = Family::<Labels, Counter>::default();
    for (kind, n) in &s.snapshots_by_trigger {
        by_trigger
            .get_or_create(&vec![("trigger".to_string(), escape(kind))])
            .inc_by(*n);
    }
    reg.register(
        "memtrace_trigger_snapshots",
        "Reports written by trigger: growth, limit (the cgroup limit's threshold), oom_kill",
        by_trigger,
    );
    counter(
        &mut reg,
        "memtrace_oom_kills",
        "Traced processes the OOM killer chose",
        s.oom_kills,
    );
    counter(
        &mut reg,
        "memtrace_ringbuf_drops",
        "Events lost because the ring buffer was full",
        s.ring_drops,
    );
    counter(
        &mut reg,
        "memtrace_stack_errors",
        "Events whose user stack could not be captured",
        s.stack_errors,
    );
    counter(
        &mut reg,
        "memtrace_stacks_capped",
        "New stacks kept under one frame because their process reached --max-stacks-per-process",
        s.capped_stacks,
    );
    let cpu: Counter<f64> = Counter::default();
    cpu.inc_by(me.cpu_seconds);
    reg.register(
        "memtrace_agent_cpu_seconds",
        "CPU time used by the agent",
        cpu,
    );
    gauge(
        &mut reg,
        "memtrace_agent_rss_bytes",
        "The agent's own resident memory",
        me.rss_bytes as i64,
    );
    for (prefix, store, p) in deliveries {
        push_metrics(&mut reg, prefix, store, p);
    }
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String");
    out
}

/// A pusher's delivery figures (`--pyroscope`, `--otlp`): requests, each
/// one window of one process.
fn push_metrics(reg: &mut Registry, prefix: &str, store: &str, p: &PushStats) {
    let name = |n: &str| format!("{prefix}_{n}");
    counter(
        reg,
        &name("profiles"),
        &format!("Requests (a window of a process) delivered to {store}"),
        p.pushed,
    );
    counter(
        reg,
        &name("failures"),
        "Attempts that failed (each is retried unless refused)",
        p.failed,
    );
    counter(
        reg,
        &name("dropped"),
        "Requests dropped: the queue or the spool was full, or the receiver refused one",
        p.dropped,
    );
    gauge(
        reg,
        &name("spooled_profiles"),
        "Requests waiting in the spool",
        p.spooled as i64,
    );
    gauge(
        reg,
        &name("spooled_bytes"),
        "Bytes waiting in the spool",
        p.spooled_bytes as i64,
    );
    let h = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
    for l in &p.latencies {
        h.observe(*l);
    }
    reg.register(name("latency_seconds"), "Time to deliver one request", h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroup::CgroupLabels;

    #[test]
    fn renders_series_with_escaped_labels() {
        let mut s = Shared::default();
        s.procs.insert(
            7,
            ProcState {
                pid: 7,
                exe: "/srv/a\"b".into(),
                go_version: "go1.27.3".into(),
                labels: CgroupLabels {
                    cgroup: "/x".into(),
                    pod_uid: Some("u".into()),
                    container_id: Some("c".into()),
                },
                vmrss: 4096,
                heap_marked: Some(1024),
                top: vec![("main.leak".into(), 100)],
                label_growth: vec![("route".into(), "/b".into(), 90)],
                ..Default::default()
            },
        );
        s.ring_drops = 3;
        let text = render(&s, SelfUsage::default(), &[]);
        assert!(text.contains(
            "memtrace_process_rss_bytes{pid=\"7\",exe=\"/srv/a\\\"b\",go_version=\"go1.27.3\",container_id=\"c\",pod_uid=\"u\"} 4096"
        ), "{text}");
        assert!(text.contains("rank=\"1\",function=\"main.leak\"} 100"));
        assert!(
            text.contains("label_key=\"route\",label_value=\"/b\"} 90"),
            "{text}"
        );
        assert!(text.contains("memtrace_ringbuf_drops_total 3"));
        assert!(text.contains("memtrace_process_go_heap_live_bytes{pid=\"7\""));
        assert!(
            !text.contains("memtrace_process_go_heap_goal_bytes{"),
            "unknown values have no series"
        );
        assert!(text.contains("memtrace_process_gc_cycles_total{pid=\"7\""));
        assert!(text.ends_with("# EOF\n"));
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .strip_suffix("_total")
                .or_else(|| name.strip_suffix("_bucket"))
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{l}");
        }
        let stats = PushStats {
            pushed: 4,
            latencies: vec![0.02],
            ..Default::default()
        };
        let otlp = PushStats {
            dropped: 2,
            ..Default::default()
        };
        let pushing = render(
            &s,
            SelfUsage::default(),
            &[
                ("memtrace_push", "Pyroscope", &stats),
                ("memtrace_otlp", "the OTLP endpoint", &otlp),
            ],
        );
        assert!(pushing.contains("memtrace_push_profiles_total 4"));
        assert!(pushing.contains("memtrace_push_latency_seconds_count 1"));
        assert!(pushing.contains("memtrace_otlp_dropped_total 2"));
        assert!(pushing.contains("memtrace_otlp_profiles_total 0"));
    }
}
