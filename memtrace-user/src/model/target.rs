//! What is known of one target beyond its stacks: how it ended, the OOM
//! kill, where its resident memory sits, and its memory cgroup.

use serde::Serialize;

/// The OOM killer chose a target: what the kernel said of it, and what
/// memtrace could not read from it any more.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OomKill {
    /// Seconds into the window.
    pub at_secs: f64,
    /// Unix time, seconds.
    pub unix_time: u64,
    /// Its resident memory at the kill, by kind (`oom:mark_victim`).
    pub anon_rss_bytes: u64,
    pub file_rss_bytes: u64,
    pub shmem_rss_bytes: u64,
    /// What could not be read from the victim (it cannot be held), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

/// How a target ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// Its exit code, when it exited normally and memtrace saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that killed it, when one did and memtrace saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// It replaced itself with another program (exec): tracing of it ended
    /// there, though the process goes on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
}

impl Exit {
    /// From a `launch::try_wait` status (128 + signal for a killed child).
    pub fn from_status(status: i32) -> Self {
        if status > 128 {
            Exit {
                signal: Some(status - 128),
                ..Exit::default()
            }
        } else {
            Exit {
                code: Some(status),
                ..Exit::default()
            }
        }
    }

    pub fn describe(&self) -> String {
        if self.exec {
            return "replaced itself with another program (exec); tracing ended there".into();
        }
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(s)) => format!("was killed by signal {s}"),
            (None, None) => "exited".to_string(),
        }
    }
}
/// Resident bytes by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Breakdown {
    /// Anonymous memory in Go's heap arena address ranges, less goroutine stacks.
    pub go_heap: u64,
    /// Goroutine stacks (allocated from heap spans).
    pub goroutine_stacks: u64,
    /// Other private anonymous memory: syscall.Mmap, cgo/malloc (`[heap]`),
    /// and the runtime's own off-heap metadata.
    pub off_heap_anon: u64,
    /// Pages of mapped files (the binary's text included).
    pub file_backed: u64,
    /// Thread stacks, shared memory, vdso and the like.
    pub other: u64,
}

impl Breakdown {
    pub fn total(&self) -> u64 {
        self.go_heap + self.goroutine_stacks + self.off_heap_anon + self.file_backed + self.other
    }
}
/// The memory cgroup of a process, read once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryCgroup {
    /// 1 or 2.
    pub version: u8,
    /// The process's cgroup in its hierarchy.
    pub path: String,
    /// The tightest limit from the cgroup up to the root (`memory.max`,
    /// `memory.limit_in_bytes`); `None`: unlimited.
    pub limit_bytes: Option<u64>,
    /// The cgroup that sets that limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_set_at: Option<String>,
    /// The tightest `memory.high` (v2), where the kernel throttles and
    /// reclaims before the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_bytes: Option<u64>,
    /// `memory.current` / `memory.usage_in_bytes`: what the limit is held
    /// against (page cache and kernel memory included, so more than RSS).
    pub usage_bytes: u64,
    /// OOM kills in the cgroup so far (`memory.events` / `memory.oom_control`).
    /// A reading taken at a kill may not count that kill yet.
    pub oom_kills: u64,
}

impl MemoryCgroup {
    /// Usage as a share of the limit, in percent.
    pub fn used_pct(&self) -> Option<f64> {
        self.limit_bytes
            .filter(|&l| l > 0)
            .map(|l| self.usage_bytes as f64 * 100.0 / l as f64)
    }
}

/// A memory cgroup as a report shows it: the last reading, how fast usage
/// grows and when it would reach the limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupSummary {
    #[serde(flatten)]
    pub reading: MemoryCgroup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_pct: Option<f64>,
    /// The least-squares slope of usage over the last readings (one a
    /// second), bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes_per_sec: Option<f64>,
    /// At that slope; absent when usage is flat or falling, or unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_limit: Option<f64>,
    /// What the projection rests on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projection: Option<String>,
}

impl CgroupSummary {
    /// One line: "cgroup limit 512 MiB: 78% used, growing 2.1 MiB/s,
    /// limit in about 3 min". `human` formats bytes.
    pub fn describe(&self, human: impl Fn(u64) -> String) -> String {
        let r = &self.reading;
        let Some(limit) = r.limit_bytes else {
            // The root cgroup's usage is the whole host's: not the target's.
            if r.path == "/" {
                return "root memory cgroup: no memory limit".into();
            }
            return format!(
                "cgroup {}: no memory limit, {} used",
                r.path,
                human(r.usage_bytes)
            );
        };
        let mut s = format!(
            "cgroup limit {}{}: {:.0}% used",
            human(limit),
            match &r.limit_set_at {
                Some(at) if *at != r.path => format!(" (set at {at})"),
                _ => String::new(),
            },
            self.used_pct.unwrap_or(0.0)
        );
        match (self.growth_bytes_per_sec, self.seconds_to_limit) {
            _ if self.used_pct.is_some_and(|p| p >= 99.5) => s.push_str(", at the limit"),
            (Some(rate), Some(secs)) => s.push_str(&format!(
                ", growing {}/s, limit in about {}",
                human(rate as u64),
                about(secs)
            )),
            _ => s.push_str(", not growing"),
        }
        if r.oom_kills > 0 {
            s.push_str(&format!(", {} OOM kill(s) so far", r.oom_kills));
        }
        s
    }
}

impl CgroupSummary {
    /// For a table cell: "78% of 512.0 MiB, full in 3 min", "no limit".
    pub fn short(&self, human: impl Fn(u64) -> String) -> String {
        let Some(limit) = self.reading.limit_bytes else {
            return "no limit".into();
        };
        let mut s = format!("{:.0}% of {}", self.used_pct.unwrap_or(0.0), human(limit));
        if let Some(secs) = self.seconds_to_limit {
            s.push_str(&format!(", full in {}", about(secs)));
        }
        s
    }
}

/// A duration as a person says it: "40 s", "3 min", "2.5 h".
fn about(secs: f64) -> String {
    if secs < 90.0 {
        format!("{secs:.0} s")
    } else if secs < 90.0 * 60.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}
