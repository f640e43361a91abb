//! A target's memory cgroup: the limit it lives under, `memory.high`, its
//! usage and its OOM kills, on cgroup v2 and v1.
//!
//! In Kubernetes a Go service rarely dies of "RSS growth": it dies at its
//! container's memory limit. So every report says how close the target is
//! to that limit and, when usage grows, when it would reach it.
//!
//! Reading is pure over a [`CgroupFs`]: the mounts (from
//! `/proc/self/mountinfo`) and a way to read a file. The host reads the
//! real tree; unit tests use recorded v1 and v2 trees.
//!
//! The limit is the tightest on the way from the process's cgroup up to
//! the hierarchy's root (a pod's limit binds its containers as much as
//! their own), with the cgroup that sets it.

use crate::model::target::CgroupSummary;
use crate::model::target::MemoryCgroup;
use std::path::{Path, PathBuf};

/// cgroup v1 shows "no limit" as the page counter's maximum rounded down
/// to a page (9223372036854771712 on 4 KiB pages): anything from 2^62 up
/// is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// Where the memory controller's hierarchies are mounted, from
/// `/proc/self/mountinfo`: a mount point and the hierarchy path it shows
/// (a container sees a subtree).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    pub v1_memory: Option<(PathBuf, String)>,
    pub v2: Option<(PathBuf, String)>,
}

/// Parses `/proc/self/mountinfo`: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS
/// [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS".
pub fn mounts(mountinfo: &str) -> Mounts {
    let mut out = Mounts::default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split_ascii_whitespace().collect();
        let r: Vec<&str> = right.split_ascii_whitespace().collect();
        let (Some(root), Some(point), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
            continue;
        };
        let entry = (PathBuf::from(unescape(point)), unescape(root));
        match *fstype {
            "cgroup2" if out.v2.is_none() => out.v2 = Some(entry),
            "cgroup"
                if out.v1_memory.is_none()
                    && r.get(2)
                        .is_some_and(|o| o.split(',').any(|o| o == "memory")) =>
            {
                out.v1_memory = Some(entry)
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes spaces and the like as `\040` (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The files a reading needs.
pub trait CgroupFs {
    fn mounts(&self) -> Mounts;
    fn read(&self, path: &Path) -> Option<String>;
}

/// Reads the memory cgroup of the process whose `/proc/PID/cgroup` is
/// `proc_cgroup`. v1's memory controller when the host mounts it (a
/// hybrid host's v2 tree has no memory files), else v2's. `None` when the
/// process's cgroup cannot be read (gone, or outside this mount
/// namespace's view).
pub fn read(fs: &dyn CgroupFs, proc_cgroup: &str) -> Option<MemoryCgroup> {
    let m = fs.mounts();
    let entries = super::entries(proc_cgroup);
    let v1 = entries
        .iter()
        .find(|(ctrl, _)| ctrl.split(',').any(|c| c == "memory"))
        .map(|(_, p)| *p);
    if let (Some(path), Some((mount, root))) = (v1, &m.v1_memory) {
        if let Some(c) = read_at(fs, 1, mount, root, path) {
            return Some(c);
        }
    }
    let v2 = entries
        .iter()
        .find(|(ctrl, _)| ctrl.is_empty())
        .map(|(_, p)| *p);
    match (v2, &m.v2) {
        (Some(path), Some((mount, root))) => read_at(fs, 2, mount, root, path),
        _ => None,
    }
}

/// One hierarchy: the cgroup's directory under `mount` (which shows the
/// hierarchy from `root`), then each parent up to the mount.
fn read_at(
    fs: &dyn CgroupFs,
    version: u8,
    mount: &Path,
    root: &str,
    path: &str,
) -> Option<MemoryCgroup> {
    let rel = if root == "/" {
        path
    } else {
        path.strip_prefix(root)
            .filter(|r| r.is_empty() || r.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    let dir = mount.join(rel);
    let (usage_file, limit_file, events_file) = match version {
        1 => (
            "memory.usage_in_bytes",
            "memory.limit_in_bytes",
            "memory.oom_control",
        ),
        _ => ("memory.current", "memory.max", "memory.events"),
    };
    let usage = number(&fs.read(&dir.join(usage_file))?)?;
    let oom_kills = fs
        .read(&dir.join(events_file))
        .and_then(|t| keyed(&t, "oom_kill"))
        .unwrap_or(0);
    let (mut limit, mut limit_at, mut high) = (None::<u64>, None, None::<u64>);
    let mut at = Some(dir.as_path());
    let mut hierarchy_path = path.to_string();
    while let Some(d) = at.filter(|d| d.starts_with(mount)) {
        let this = fs
            .read(&d.join(limit_file))
            .and_then(|t| limit_value(version, &t));
        if let Some(l) = this.filter(|&l| limit.is_none_or(|cur| l < cur)) {
            limit = Some(l);
            limit_at = Some(if hierarchy_path.is_empty() {
                "/".into()
            } else {
                hierarchy_path.clone()
            });
        }
        if version == 2 {
            let h = fs
                .read(&d.join("memory.high"))
                .and_then(|t| limit_value(2, &t));
            if let Some(h) = h.filter(|&h| high.is_none_or(|cur| h < cur)) {
                high = Some(h);
            }
        }
        at = d.parent();
        hierarchy_path = match hierarchy_path.rsplit_once('/') {
            Some((parent, _)) => parent.to_string(),
            None => String::new(),
        };
    }
    Some(MemoryCgroup {
        version,
        path: path.to_string(),
        limit_bytes: limit,
        limit_set_at: limit_at,
        high_bytes: high,
        usage_bytes: usage,
        oom_kills,
    })
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file's value: `max` (v2) or v1's near-2^63 mean none.
fn limit_value(version: u8, text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v = number(t)?;
    (version == 2 || v < V1_UNLIMITED).then_some(v)
}

/// `key N` from a flat keyed file (`memory.events`, `memory.oom_control`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| number(v)).flatten()
    })
}

/// When usage growing at `rate` bytes/s reaches the limit, in seconds.
/// `None` when there is no limit, or usage is flat or falling (a
/// projection from noise would only alarm).
pub fn seconds_to_limit(c: &MemoryCgroup, rate: f64) -> Option<f64> {
    let limit = c.limit_bytes?;
    // Below 4 KiB/s (a page a second) growth is noise, not a trend.
    if rate < 4096.0 {
        return None;
    }
    Some(limit.saturating_sub(c.usage_bytes) as f64 / rate)
}

/// Usage growth from samples `(seconds, usage)`: the least-squares slope
/// over them, in bytes/s. `None` for fewer than two samples or no time
/// between them.
pub fn growth_rate(samples: &[(f64, u64)]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let mt = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mu = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, u) in samples {
        num += (t - mt) * (u as f64 - mu);
        den += (t - mt) * (t - mt);
    }
    (den > 0.0).then(|| num / den)
}

/// The summary of a reading and the usage samples before it.
pub fn summarize(reading: MemoryCgroup, usage: &[(f64, u64)]) -> CgroupSummary {
    let rate = growth_rate(usage);
    let to_limit = rate.and_then(|r| seconds_to_limit(&reading, r));
    let span = match (usage.first(), usage.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0.0,
    };
    CgroupSummary {
        used_pct: reading.used_pct(),
        growth_bytes_per_sec: rate,
        seconds_to_limit: to_limit,
        projection: to_limit.map(|_| {
            format!(
                "a straight line through the last {} s of usage ({} readings)",
                span.round(),
                usage.len()
            )
        }),
        reading,
    }
}

/// A process's own view of its cgroup tree: its mounts (from
/// `/proc/PID/mountinfo`) under `/proc/PID/root`. The way in when
/// memtrace runs in a container of its own cgroup namespace (a DaemonSet
/// on cgroup v2), where `/proc/PID/cgroup` names the target's cgroup
/// relative to memtrace's (`/../../kubepods…`) and memtrace's
/// `/sys/fs/cgroup` shows only its own subtree: the container runtime
/// mounts each container's cgroup at its own `/sys/fs/cgroup`.
pub struct ProcessView {
    pub root: PathBuf,
    pub mountinfo: String,
}

impl ProcessView {
    pub fn of(pid: u32) -> Option<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        Some(Self {
            mountinfo: std::fs::read_to_string(dir.join("mountinfo")).ok()?,
            root: dir.join("root"),
        })
    }

    /// The process's memory cgroup as it sees it: the root of its cgroup
    /// namespace, which is its container's cgroup. Limits set above it
    /// (a pod's) are out of its view.
    pub fn read(&self) -> Option<MemoryCgroup> {
        let m = mounts(&self.mountinfo);
        let (version, root) = match (&m.v1_memory, &m.v2) {
            (Some((_, r)), _) => (1, r.clone()),
            (None, Some((_, r))) => (2, r.clone()),
            _ => return None,
        };
        let proc_cgroup = if version == 1 {
            format!("1:memory:{root}\n")
        } else {
            format!("0::{root}\n")
        };
        read(self, &proc_cgroup)
    }
}

impl CgroupFs for ProcessView {
    fn mounts(&self) -> Mounts {
        let mut m = mounts(&self.mountinfo);
        let under = |e: &mut Option<(PathBuf, String)>| {
            if let Some((point, _)) = e.as_mut() {
                *point = self.root.join(point.strip_prefix("/").unwrap_or(point));
            }
        };
        under(&mut m.v1_memory);
        under(&mut m.v2);
        m
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Whether a `/proc/PID/cgroup` path lies outside the reader's cgroup
/// namespace (`/../..`): the host's tree cannot be walked from it.
pub fn outside_view(proc_cgroup: &str) -> bool {
    proc_cgroup.lines().any(|l| l.contains(":/.."))
}

/// The host's cgroup tree.
pub struct SysFs;

impl CgroupFs for SysFs {
    /// Read once: mounts do not move under a running memtrace.
    fn mounts(&self) -> Mounts {
        static MOUNTS: std::sync::OnceLock<Mounts> = std::sync::OnceLock::new();
        MOUNTS
            .get_or_init(|| {
                std::fs::read_to_string("/proc/self/mountinfo")
                    .map(|t| mounts(&t))
                    .unwrap_or_default()
            })
            .clone()
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
