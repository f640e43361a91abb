//! `memtrace top`'s model: what one refresh shows, built from the engine's
//! cumulative report of each process and its VmRSS history, and the plain
//! text it prints when stdout is not a terminal. The terminal UI (in
//! `policy`) draws the same [`View`] with [`screen::draw`]; everything
//! here is pure.

pub mod policy;
pub mod screen;

use std::fmt::Write as _;

use crate::model::lens::Lens;
use crate::model::profile::human_bytes;
use crate::model::summary::{Summary, TopEntry};

/// How many VmRSS samples a row keeps for its sparkline.
pub const HISTORY: usize = 120;

/// One stack of the selected lens, as a line.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLine {
    pub value: u64,
    /// Of the lens's total.
    pub share: f64,
    pub function: String,
    /// Base name of the file, "" when unknown.
    pub file: String,
    pub line: u32,
}

impl TopLine {
    /// `main.cacheSession main.go:55`.
    pub fn place(&self) -> String {
        if self.line > 0 {
            format!("{} {}:{}", self.function, self.file, self.line)
        } else {
            self.function.clone()
        }
    }
}

/// One process.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub pid: u32,
    /// The executable's file name.
    pub name: String,
    /// VmRSS samples, oldest first (at most [`HISTORY`]).
    pub history: Vec<u64>,
    /// Bytes per second over the last refresh.
    pub rate: f64,
    /// VmRSS now less VmRSS when tracing began.
    pub net: i64,
    pub goroutines: Option<u64>,
    /// The memory cgroup's limit, in short ("78% of 512.0 MiB, full in 3 min").
    pub limit: Option<String>,
    pub gc_cycles: u64,
    pub gc_p99_ns: u64,
    /// How it ended, once it has.
    pub exited: Option<String>,
    /// The selected lens's largest stacks since tracing began.
    pub top: Vec<TopLine>,
    /// The selected lens's total and unit.
    pub total: u64,
}

impl Row {
    pub fn rss(&self) -> u64 {
        self.history.last().copied().unwrap_or(0)
    }

    /// Adds a VmRSS sample taken `secs` after the previous one.
    pub fn sample(&mut self, rss: u64, secs: f64) {
        if let Some(&prev) = self.history.last() {
            if secs > 0.0 {
                self.rate = (rss as f64 - prev as f64) / secs;
            }
        }
        let first = self.history.first().copied().unwrap_or(rss);
        self.net = rss as i64 - first as i64;
        if self.history.len() == HISTORY {
            // Keep the first sample: net growth is since tracing began.
            self.history.remove(1);
        }
        self.history.push(rss);
    }

    /// Takes the lens's figures from the process's cumulative report: its
    /// functions (stacks grouped by their innermost frame of the program's
    /// own code), or with `leaf_frames` its stacks by their leaf.
    pub fn update_from(&mut self, lens: Lens, summary: &Summary, top_n: usize, leaf_frames: bool) {
        self.gc_cycles = summary.gc.cycles;
        if let Some(c) = summary
            .targets
            .iter()
            .find(|t| t.pid == self.pid)
            .and_then(|t| t.cgroup.as_ref())
        {
            self.limit = Some(c.short(crate::model::profile::human_bytes));
        }
        self.gc_p99_ns = summary.gc.pauses.p99_ns;
        if let Some(g) = summary.lenses.get(Lens::Goroutines.name()) {
            self.goroutines = Some(g.total);
        }
        let Some(ls) = summary.lenses.get(lens.name()) else {
            self.top.clear();
            self.total = 0;
            return;
        };
        self.total = ls.total;
        if !leaf_frames && !ls.top_functions.is_empty() {
            // By the program's own function, every stack below it summed.
            self.top = ls
                .top_functions
                .iter()
                .take(top_n)
                .map(|f| TopLine {
                    value: f.value,
                    share: f.share,
                    function: f.function.clone(),
                    file: f.file.rsplit('/').next().unwrap_or(&f.file).to_string(),
                    line: f.line,
                })
                .collect();
            return;
        }
        let lines = ls.top.iter().map(|t| {
            let (function, file, line) = shown_frame(t, leaf_frames);
            TopLine {
                value: t.value,
                share: if ls.total > 0 {
                    t.value as f64 / ls.total as f64
                } else {
                    0.0
                },
                function,
                file,
                line,
            }
        });
        // Stacks that end at the same place are one line here.
        let mut merged: Vec<TopLine> = Vec::new();
        for l in lines {
            match merged.iter_mut().find(|m| m.place() == l.place()) {
                Some(m) => {
                    m.value += l.value;
                    m.share += l.share;
                }
                None => merged.push(l),
            }
        }
        merged.sort_by_key(|l| std::cmp::Reverse(l.value));
        merged.truncate(top_n);
        self.top = merged;
    }
}

/// What one refresh shows.
#[derive(Clone, Debug)]
pub struct View {
    pub lens: Lens,
    pub lenses: Vec<Lens>,
    pub elapsed: f64,
    pub interval: f64,
    pub rows: Vec<Row>,
    pub events: u64,
    pub drops: u64,
    /// Top stacks named by their leaf frames (`l` toggles).
    pub leaf_frames: bool,
}

/// `values` as a line of block characters, `width` wide (the latest
/// samples; scaled between their minimum and maximum).
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &values[values.len().saturating_sub(width)..];
    let (lo, hi) = match (tail.iter().min(), tail.iter().max()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => return String::new(),
    };
    tail.iter()
        .map(|&v| {
            if hi == lo {
                BARS[0]
            } else {
                BARS[((v - lo) as f64 / (hi - lo) as f64 * 7.0).round() as usize]
            }
        })
        .collect()
}

/// `+1.5 MiB` / `-200.0 KiB` / `0 B`.
pub fn signed_bytes(v: i64) -> String {
    match v {
        0 => "0 B".into(),
        v if v > 0 => format!("+{}", human_bytes(v as u64)),
        v => format!("-{}", human_bytes(v.unsigned_abs())),
    }
}

/// `+1.5 MiB/s`.
pub fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", signed_bytes(bytes_per_sec.round() as i64))
}

/// A value in the lens's unit.
pub fn amount(lens: Lens, v: u64) -> String {
    if lens.unit() == "bytes" {
        human_bytes(v)
    } else {
        format!("{v} {}", lens.unit())
    }
}

/// The GC column: `34 cycles, p99 0.21 ms`.
pub fn gc(row: &Row) -> String {
    if row.gc_cycles == 0 {
        "-".into()
    } else {
        format!(
            "{} cycles, p99 {:.2} ms",
            row.gc_cycles,
            row.gc_p99_ns as f64 / 1e6
        )
    }
}

/// One plain block for a refresh (stdout is not a terminal).
pub fn plain(view: &View, top_n: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memtrace top: {:.0} s, lens {}, {} events, {} dropped",
        view.elapsed,
        view.lens.name(),
        view.events,
        view.drops
    );
    for r in &view.rows {
        let _ = writeln!(
            out,
            "  pid {} {}: RSS {} ({}, net {} since start), goroutines {}, GC {}{}",
            r.pid,
            r.name,
            human_bytes(r.rss()),
            rate(r.rate),
            signed_bytes(r.net),
            r.goroutines.map_or("-".into(), |g| g.to_string()),
            gc(r),
            r.exited
                .as_ref()
                .map_or(String::new(), |e| format!(" [{e}]"))
        );
        for t in r.top.iter().take(top_n) {
            let _ = writeln!(
                out,
                "    {:>10} {:>5.1}%  {}",
                amount(view.lens, t.value),
                t.share * 100.0,
                t.place()
            );
        }
    }
    out
}

/// Where a top stack is shown to be: its innermost frame outside the Go
/// runtime and other plumbing (`runtime.*`, `internal/*`, `syscall.*`: as
/// `record`'s terminal names it), or its leaf; function, file base name
/// and line.
pub fn shown_frame(t: &TopEntry, leaf_frames: bool) -> (String, String, u32) {
    let frame = if leaf_frames {
        t.frames.last()
    } else {
        t.own_frame.as_ref()
    };
    match frame {
        Some(f) => (
            f.function.clone(),
            f.file.rsplit('/').next().unwrap_or("").to_string(),
            f.line,
        ),
        None => (
            t.stack.last().cloned().unwrap_or_default(),
            String::new(),
            0,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_named_by_the_programs_own_innermost_frame() {
        use crate::model::summary::FrameEntry;
        let f = FrameEntry::at;
        let t = TopEntry::new(
            vec![],
            vec![
                f("runtime.main", "/go/src/runtime/proc.go", 250),
                f("main.storeSession", "/src/app/main.go", 27),
                f("runtime.newobject", "/go/src/runtime/malloc.go", 1000),
                f("runtime.(*mspan).init", "/go/src/runtime/mheap.go", 1400),
            ],
            1,
        );
        assert_eq!(
            shown_frame(&t, false),
            ("main.storeSession".to_string(), "main.go".to_string(), 27)
        );
        assert_eq!(shown_frame(&t, true).0, "runtime.(*mspan).init");
        // All runtime: the leaf.
        let runtime_only = TopEntry::new(vec![], vec![f("runtime.bgsweep", "mgcsweep.go", 300)], 1);
        assert_eq!(shown_frame(&runtime_only, false).0, "runtime.bgsweep");
    }

    #[test]
    fn rows_track_rate_and_net_growth() {
        let mut r = Row::default();
        r.sample(100 << 20, 0.0);
        r.sample(110 << 20, 2.0);
        assert_eq!(r.rate, (5 << 20) as f64);
        assert_eq!(r.net, 10 << 20);
        for _ in 0..500 {
            r.sample(90 << 20, 1.0);
        }
        assert_eq!(r.history.len(), HISTORY);
        assert_eq!(r.net, -(10 << 20), "net stays since the start");
        assert_eq!(r.rate, 0.0);
    }

    #[test]
    fn sparklines_scale_to_their_range() {
        assert_eq!(sparkline(&[1, 2, 3, 4, 5, 6, 7, 8], 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[5, 5, 5], 8), "▁▁▁");
        assert_eq!(sparkline(&[0, 100, 0, 100], 2), "▁█");
        assert_eq!(sparkline(&[], 4), "");
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(signed_bytes(3 << 20), "+3.0 MiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
        assert_eq!(rate(-1.4), "-1 B/s");
        let row = Row {
            pid: 7,
            name: "svc".into(),
            history: vec![1 << 20],
            goroutines: Some(12),
            gc_cycles: 3,
            gc_p99_ns: 250_000,
            top: vec![TopLine {
                value: 1 << 20,
                share: 0.5,
                function: "main.cacheSession".into(),
                file: "main.go".into(),
                line: 55,
            }],
            ..Row::default()
        };
        let v = View {
            lens: Lens::Rss,
            lenses: vec![Lens::Rss],
            elapsed: 4.0,
            interval: 2.0,
            rows: vec![row],
            events: 10,
            drops: 0,
            leaf_frames: false,
        };
        let text = plain(&v, 5);
        assert!(text.contains("pid 7 svc: RSS 1.0 MiB"), "{text}");
        assert!(
            text.contains("goroutines 12, GC 3 cycles, p99 0.25 ms"),
            "{text}"
        );
        assert!(
            text.contains("1.0 MiB  50.0%  main.cacheSession main.go:55"),
            "{text}"
        );
    }
}
