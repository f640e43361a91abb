//! What `record` prints when it is done: per lens the total, the top
//! three functions and the top three stacks, VmRSS and where resident memory sits per target, and the
//! GC view.

use crate::engine::Target;
use crate::model::profile::{FrameMode, Profile};
use crate::model::report::Report;
use crate::render::report::{human_bytes, is_plumbing, short_stack, WrittenReport};

fn fmt_value(unit: &str, v: u64) -> String {
    if unit == "bytes" {
        human_bytes(v)
    } else {
        format!("{v} {unit}")
    }
}

/// What was dropped, and where: the ring buffer, or the kernel skipping a
/// probe run.
pub fn drops(c: &crate::model::summary::Counters) -> String {
    let mut why = Vec::new();
    if c.ringbuf_drops > 0 {
        why.push(format!("{} (ring buffer full)", c.ringbuf_drops));
    }
    if c.kernel_misses > 0 {
        why.push(format!(
            "{} (probe runs the kernel skipped: another BPF program was running on that CPU)",
            c.kernel_misses
        ));
    }
    format!(
        "{} events were dropped: {}; totals are low by that many events",
        c.ringbuf_drops + c.kernel_misses,
        why.join(", ")
    )
}

/// The end-of-run summary of `record`, on stdout (warnings on stderr).
pub fn print_record<'a>(
    report: &Report,
    written: &WrittenReport,
    targets: impl Iterator<Item = &'a Target>,
) {
    let s = &report.summary;
    eprintln!(
        "memtrace: stopped ({}) after {:.1} s: {} events, {} dropped, {} stack errors{}",
        s.ended_by,
        s.duration_secs,
        s.counters.events,
        s.dropped_events,
        s.counters.stack_errors,
        stack_error_reasons(&s.counters)
    );
    if s.dropped_events > 0 {
        eprintln!("memtrace: warning: {}", drops(&s.counters));
    }
    for w in &report.warnings {
        eprintln!("memtrace: warning: {w}");
    }
    for t in targets {
        if let Some(e) = t.exit {
            eprintln!("memtrace: pid {} {}", t.pid, e.describe());
        }
    }
    for (p, w) in report.profiles.iter().zip(&written.profiles) {
        print_lens(p);
        let extra = s.lenses.get(p.lens.name()).and_then(|l| l.extra.as_ref());
        if let Some(r) = extra.and_then(|e| e.rss()) {
            print_net(r, p.total());
        }
        println!(
            "  wrote {}, {}, {}",
            w.svg.display(),
            w.folded.display(),
            w.pprof.display()
        );
        let net_of = report.net().map(|(grew, _)| grew.lens);
        if let (true, Some((svg, folded))) = (net_of == Some(p.lens), &written.net) {
            println!("  wrote {}, {}", svg.display(), folded.display());
        }
    }
    for t in &s.targets {
        if let (Some(a), Some(b)) = (t.vmrss_start, t.vmrss_end) {
            println!(
                "pid {}: VmRSS {} -> {} ({}{})",
                t.pid,
                human_bytes(a),
                human_bytes(b),
                if b >= a { "+" } else { "-" },
                human_bytes(b.abs_diff(a))
            );
        }
        if let Some(o) = &t.oom_kill {
            println!(
                "pid {}: killed by the OOM killer {:.1} s into the window, with {} anonymous, {} file and {} shared memory resident",
                t.pid,
                o.at_secs,
                human_bytes(o.anon_rss_bytes),
                human_bytes(o.file_rss_bytes),
                human_bytes(o.shmem_rss_bytes)
            );
            for u in &o.unread {
                println!("pid {}: not read at the kill: {u}", t.pid);
            }
        }
        if let Some(b) = t.breakdown {
            println!(
                "pid {}: resident now: Go heap {}, goroutine stacks {}, off-heap anonymous {}, file-backed {}, other {}",
                t.pid,
                human_bytes(b.go_heap),
                human_bytes(b.goroutine_stacks),
                human_bytes(b.off_heap_anon),
                human_bytes(b.file_backed),
                human_bytes(b.other)
            );
        }
        if let Some(c) = &t.cgroup {
            println!("pid {}: {}", t.pid, c.describe(human_bytes));
        }
    }
    print_gc(&s.gc);
    if let Some(l) = &s.labels {
        print_label_stats(l);
    }
    for p in &written.timelines {
        println!("wrote {}", p.display());
    }
    println!("wrote {}", written.summary.display());
}

fn print_lens(p: &Profile) {
    let (lens, unit) = (p.lens, p.unit);
    println!(
        "{lens} lens: total {} in {} stacks",
        fmt_value(unit, p.total()),
        p.samples.len()
    );
    // Functions first (every stack below one summed), then stacks.
    let summary = crate::model::summary::lens_summary(p, None);
    for f in summary.top_functions.iter().take(3) {
        let base = f.file.rsplit('/').next().unwrap_or(&f.file);
        let at = if f.line > 0 {
            format!("  ({base}:{})", f.line)
        } else {
            String::new()
        };
        println!(
            "  {:>12} {:>5.1}%  {}{at}, {} stack{}",
            fmt_value(unit, f.value),
            f.share * 100.0,
            f.function,
            f.stacks,
            if f.stacks == 1 { "" } else { "s" }
        );
    }
    for (i, s) in p.named(FrameMode::Func).iter().take(3).enumerate() {
        // The position of the deepest frame of the program's own code (the
        // one the short stack ends at), else of the leaf.
        let at = s
            .frames
            .iter()
            .rev()
            .find(|f| !is_plumbing(&f.function))
            .or(s.frames.last())
            .filter(|f| f.line > 0 && !f.file.is_empty())
            .map(|f| {
                let base = f.file.rsplit('/').next().unwrap_or(&f.file);
                format!("  ({base}:{})", f.line)
            })
            .unwrap_or_default();
        println!(
            "  #{} {:>12}  {}{at}",
            i + 1,
            fmt_value(unit, s.value),
            short_stack(&s.names, 4)
        );
    }
    print_by_label(p);
}

/// The lens's top label values per key: `by label route: /b 9.6 MiB
/// (48%), /a 9.5 MiB (47%), [no labels] 1.0 MiB (5%)`.
fn print_by_label(p: &Profile) {
    let total = p.total().max(1);
    for (key, values) in p.by_label() {
        let mut v: Vec<(String, u64)> = values.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = v
            .iter()
            .take(3)
            .map(|(value, n)| {
                format!(
                    "{value} {} ({:.0}%)",
                    fmt_value(p.unit, *n),
                    *n as f64 * 100.0 / total as f64
                )
            })
            .collect();
        let more = v.len().saturating_sub(3);
        let more = if more > 0 {
            format!(", {more} more")
        } else {
            String::new()
        };
        println!("  by label {key}: {}{more}", shown.join(", "));
    }
}

/// What the label bounds did, and what could not be read.
fn print_label_stats(l: &crate::model::labels::LabelStats) {
    let kept: usize = l.values.values().sum();
    println!(
        "pprof labels: {} label sets, {kept} values of {} keys; {} sets copied",
        l.sets,
        l.values.len(),
        l.captured
    );
    if l.folded_values > 0 || l.dropped_keys > 0 {
        eprintln!(
            "memtrace: warning: pprof labels: {} distinct values past {} per key folded into {}{}",
            l.folded_values,
            crate::model::labels::MAX_VALUES,
            crate::model::labels::OTHER,
            if l.dropped_keys > 0 {
                format!(
                    ", and {} keys past {} dropped",
                    l.dropped_keys,
                    crate::model::labels::MAX_KEYS
                )
            } else {
                String::new()
            }
        );
    }
    if l.unreadable + l.stale + l.unmatched > 0 {
        println!(
            "pprof labels: {} label sets could not be read, {} were replaced before they were read, and {} events named a copied set no longer held; their events count under {}",
            l.unreadable,
            l.stale,
            l.unmatched,
            crate::model::labels::NO_LABELS
        );
    }
    if l.not_captured > 0 {
        println!(
            "pprof labels: {} label sets could not be copied (more than {} labels, or unreadable) and were read from memory instead",
            l.not_captured,
            memtrace_common::label_capture::CAPTURE_LABELS
        );
    }
}

/// `net +X (grew Y, released Z that was resident before tracing)`.
fn print_net(extra: &crate::model::extras::RssExtras, grew: u64) {
    let (net, released) = (extra.net_growth, extra.released_before_bytes);
    println!(
        "  net {}{} (grew {}, released {} that was resident before tracing)",
        if net >= 0 { "+" } else { "-" },
        human_bytes(net.unsigned_abs()),
        human_bytes(grew),
        human_bytes(released)
    );
}

fn print_gc(gc: &crate::model::gc::GcSummary) {
    let (cycles, p) = (gc.cycles, &gc.pauses);
    if cycles == 0 && p.count == 0 {
        return;
    }
    let us = |ns: u64| format!("{:.0} µs", ns as f64 / 1e3);
    let last = gc
        .last()
        .filter(|c| c.heap_goal > 0)
        .map(|c| {
            format!(
                "; last cycle: heap {}, goal {}",
                human_bytes(c.heap_live),
                human_bytes(c.heap_goal)
            )
        })
        .unwrap_or_default();
    println!(
        "GC: {cycles} cycles; stop-the-world pauses p50 {}, p99 {}, max {} ({} pauses){last}",
        us(p.p50_ns),
        us(p.p99_ns),
        us(p.max_ns),
        p.count,
    );
}

/// Why stack walks failed, for the stop line: ` (errno 14, user stack
/// unreadable: 12 events; ...)`, or nothing when none did.
fn stack_error_reasons(c: &crate::model::summary::Counters) -> String {
    if c.stack_error_reasons.is_empty() {
        return String::new();
    }
    let each: Vec<String> = c
        .stack_error_reasons
        .iter()
        .map(|r| format!("errno {}, {}: {} events", r.errno, r.reason, r.events))
        .collect();
    format!(" ({})", each.join("; "))
}
