//! Prometheus text exposition (format 0.0.4) of the agent's state.

use std::fmt::Write as _;

use super::{ProcState, Shared};

/// The agent's own resource use, read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelfUsage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(p: &ProcState) -> String {
    let mut l = format!(
        "pid=\"{}\",exe=\"{}\",go_version=\"{}\"",
        p.pid,
        escape(&p.exe),
        escape(&p.go_version)
    );
    if let Some(c) = &p.labels.container_id {
        let _ = write!(l, ",container_id=\"{}\"", escape(c));
    }
    if let Some(u) = &p.labels.pod_uid {
        let _ = write!(l, ",pod_uid=\"{}\"", escape(u));
    }
    if let Some(pod) = &p.pod {
        let _ = write!(
            l,
            ",pod_namespace=\"{}\",pod_name=\"{}\"",
            escape(&pod.namespace),
            escape(&pod.name)
        );
    }
    l
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
        }
    }
}

/// A per-process family: name, type, help, and how to read its value.
type ProcFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProcState) -> u64,
);

/// Renders every metric.
pub fn render(s: &Shared, me: SelfUsage) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let per_proc: &[ProcFamily] = &[
        (
            "memtrace_process_rss_bytes",
            "gauge",
            "Resident set size (VmRSS) of a traced Go process.",
            |p| p.vmrss,
        ),
        (
            "memtrace_process_rss_growth_bytes",
            "gauge",
            "Resident memory that became resident in the last window and stayed, attributed to stacks.",
            |p| p.growth_bytes,
        ),
        (
            "memtrace_process_goroutines",
            "gauge",
            "Live goroutines.",
            |p| p.goroutines,
        ),
        (
            "memtrace_process_gc_cycles_total",
            "counter",
            "GC cycles completed while traced.",
            |p| p.gc_cycles,
        ),
        (
            "memtrace_process_snapshots_total",
            "counter",
            "Automatic snapshots written for the process.",
            |p| p.snapshots,
        ),
    ];
    for (name, kind, help, get) in per_proc {
        f.head(name, kind, help);
        for p in s.procs.values() {
            f.sample(name, &labels(p), get(p));
        }
    }
    f.head(
        "memtrace_process_top_growth_bytes",
        "gauge",
        "The largest resident-growth stacks of the last window, by leaf function (at most 5 per process).",
    );
    for p in s.procs.values() {
        for (rank, (func, bytes)) in p.top.iter().enumerate() {
            let l = format!(
                "{},rank=\"{}\",function=\"{}\"",
                labels(p),
                rank + 1,
                escape(func)
            );
            f.sample("memtrace_process_top_growth_bytes", &l, bytes);
        }
    }
    let agent: &[(&str, &str, &str, String)] = &[
        (
            "memtrace_processes",
            "gauge",
            "Go processes traced now.",
            s.procs.len().to_string(),
        ),
        (
            "memtrace_processes_discovered_total",
            "counter",
            "Go processes the agent started tracing.",
            s.discovered.to_string(),
        ),
        (
            "memtrace_windows_total",
            "counter",
            "Profile windows completed.",
            s.windows.to_string(),
        ),
        (
            "memtrace_snapshots_total",
            "counter",
            "Automatic snapshots written.",
            s.snapshots.to_string(),
        ),
        (
            "memtrace_ringbuf_drops_total",
            "counter",
            "Events lost because the ring buffer was full.",
            s.ring_drops.to_string(),
        ),
        (
            "memtrace_stack_errors_total",
            "counter",
            "Events whose user stack could not be captured.",
            s.stack_errors.to_string(),
        ),
        (
            "memtrace_agent_cpu_seconds_total",
            "counter",
            "CPU time used by the agent.",
            format!("{:.3}", me.cpu_seconds),
        ),
        (
            "memtrace_agent_rss_bytes",
            "gauge",
            "The agent's own resident memory.",
            me.rss_bytes.to_string(),
        ),
    ];
    for (name, kind, help, v) in agent {
        f.head(name, kind, help);
        f.sample(name, "", v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupLabels;

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
                top: vec![("main.leak".into(), 100)],
                ..Default::default()
            },
        );
        s.ring_drops = 3;
        let text = render(&s, SelfUsage::default());
        assert!(text.contains(
            "memtrace_process_rss_bytes{pid=\"7\",exe=\"/srv/a\\\"b\",go_version=\"go1.27.3\",container_id=\"c\",pod_uid=\"u\"} 4096"
        ), "{text}");
        assert!(text.contains("rank=\"1\",function=\"main.leak\"} 100"));
        assert!(text.contains("memtrace_ringbuf_drops_total 3"));
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
        }
    }
}
