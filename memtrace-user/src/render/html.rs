//! `index.html`: the whole report as one self-contained page to attach to a
//! ticket. Everything is inline (SVG flame graphs without their scripts,
//! so that several live on one page; hover titles still name each frame),
//! and nothing is fetched from the network.

use std::fmt::Write as _;

use super::svg;
use crate::model::lens::Lens;
use crate::model::profile::{human_bytes, FrameMode, Profile};
use crate::model::summary::{LensSummary, Summary, TargetSummary};

/// What the page shows besides the summary.
pub struct Page<'a> {
    pub summary: &'a Summary,
    /// One per lens, in lens order.
    pub profiles: &'a [Profile],
    /// The rss-net differential flame graph, when there is one, and the
    /// lens whose section it follows.
    pub net: Option<(Lens, &'a [u8])>,
    /// (title, SVG) of each RSS timeline.
    pub timelines: &'a [(String, String)],
    pub mode: FrameMode,
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An SVG document without its XML prolog and doctype, for inlining.
fn inline_svg(svg: &[u8]) -> String {
    let s = String::from_utf8_lossy(svg);
    match s.find("<svg") {
        Some(i) => s[i..].to_string(),
        None => String::new(),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1250px}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}.warn{color:#a40}\
svg{max-width:100%;height:auto}details summary{cursor:pointer}code{font-size:.95em}";

fn value(unit: &str, v: u64) -> String {
    if unit == "bytes" {
        human_bytes(v)
    } else {
        format!("{v} {unit}")
    }
}

fn targets_table(out: &mut String, targets: &[TargetSummary]) {
    out.push_str(
        "<table><tr><th>pid</th><th>executable</th><th>Go</th><th>build</th>\
         <th>VmRSS start → end</th><th>memory cgroup</th><th>ended</th></tr>",
    );
    for t in targets {
        let rss = match (t.vmrss_start, t.vmrss_end) {
            (Some(a), Some(b)) => format!("{} → {}", human_bytes(a), human_bytes(b)),
            (None, Some(b)) => format!("→ {}", human_bytes(b)),
            _ => "-".into(),
        };
        let build = format!(
            "{}{}",
            if t.stripped { "stripped" } else { "symbols" },
            if t.pie { ", PIE" } else { "" }
        );
        let ended = match (&t.oom_kill, &t.exit) {
            (Some(o), _) => format!("killed by the OOM killer at {:.1} s", o.at_secs),
            (None, e) => e.as_ref().map_or("running".to_string(), |e| e.describe()),
        };
        let cgroup = t
            .cgroup
            .as_ref()
            .map_or("-".to_string(), |c| c.describe(human_bytes));
        let _ = write!(
            out,
            "<tr><td class=n>{}</td><td><code>{}</code></td><td>{}{}</td><td>{build}</td>\
             <td class=n>{rss}</td><td>{}</td><td>{}</td></tr>",
            t.pid,
            esc(&t.exe),
            esc(&t.go_version),
            t.module.as_deref().map_or(String::new(), |m| format!(
                "<br><span class=muted>{}</span>",
                esc(m)
            )),
            esc(&cgroup),
            esc(&ended)
        );
    }
    out.push_str("</table>");
}

fn breakdown_table(out: &mut String, targets: &[TargetSummary]) {
    let with: Vec<&TargetSummary> = targets.iter().filter(|t| t.breakdown.is_some()).collect();
    if with.is_empty() {
        return;
    }
    out.push_str(
        "<h2 id=breakdown>Where resident memory sits</h2><table><tr><th>pid</th>\
         <th>Go heap</th><th>goroutine stacks</th><th>off-heap anonymous</th><th>file-backed</th>\
         <th>other</th><th>total</th></tr>",
    );
    for t in with {
        let b = t.breakdown.as_ref().expect("filtered");
        let _ = write!(
            out,
            "<tr><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
             <td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            t.pid,
            human_bytes(b.go_heap),
            human_bytes(b.goroutine_stacks),
            human_bytes(b.off_heap_anon),
            human_bytes(b.file_backed),
            human_bytes(b.other),
            human_bytes(b.total())
        );
    }
    out.push_str("</table>");
}

fn gc_section(out: &mut String, gc: &crate::model::gc::GcSummary) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let p = &gc.pauses;
    let _ = write!(
        out,
        "<h2 id=gc>GC</h2><p>{} cycles; stop-the-world pauses: {} (p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms)</p>",
        gc.cycles,
        p.count,
        ms(p.p50_ns),
        ms(p.p99_ns),
        ms(p.max_ns)
    );
    let detail = &gc.cycle_detail;
    if detail.is_empty() {
        return;
    }
    out.push_str("<details><summary>cycles</summary><table><tr><th>pid</th><th>t (s)</th><th>heap at mark termination</th><th>live after the previous cycle</th><th>goal</th></tr>");
    for c in detail.iter().take(200) {
        let _ = write!(
            out,
            "<tr><td class=n>{}</td><td class=n>{:.2}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            c.pid,
            c.t,
            human_bytes(c.heap_live),
            human_bytes(c.heap_marked),
            human_bytes(c.heap_goal)
        );
    }
    if detail.len() > 200 {
        let _ = write!(
            out,
            "<tr><td colspan=5 class=muted>… {} more in summary.json</td></tr>",
            detail.len() - 200
        );
    }
    out.push_str("</table></details>");
}

/// The frame that names a top stack (its own code's innermost frame, see
/// `TopEntry::own_frame`), with file:line where known.
fn leaf(top: &crate::model::summary::TopEntry) -> String {
    match top.own_frame.as_ref() {
        Some(f) if f.line > 0 => {
            let file = f.file.rsplit('/').next().unwrap_or(&f.file);
            format!(
                "{} <span class=muted>{}:{}</span>",
                esc(&f.function),
                esc(file),
                f.line
            )
        }
        Some(f) => esc(&f.function),
        None => esc(top.stack.last().map_or("", String::as_str)),
    }
}

/// The lens's functions first (its stacks grouped by own frame), each with
/// its stacks to unfold; then every stack, folded away.
fn top_table(out: &mut String, s: &LensSummary) {
    if s.top.is_empty() {
        return;
    }
    if s.top_functions.is_empty() {
        return stack_table(out, s);
    }
    out.push_str("<table><tr><th>#</th><th>value</th><th>share</th><th>function</th></tr>");
    for (i, f) in s.top_functions.iter().enumerate() {
        let file = f.file.rsplit('/').next().unwrap_or(&f.file);
        let at = if f.line > 0 {
            format!(" <span class=muted>{}:{}</span>", esc(file), f.line)
        } else {
            String::new()
        };
        let stacks: Vec<String> = s
            .top
            .iter()
            .filter(|t| {
                t.own_frame
                    .as_ref()
                    .is_some_and(|o| o.function == f.function)
            })
            .map(|t| format!("{} — {}", value(s.unit, t.value), esc(&t.stack.join(" → "))))
            .collect();
        let _ = write!(
            out,
            "<tr><td class=n>{}</td><td class=n>{}</td><td class=n>{:.1}%</td><td>{}{at}<details><summary class=muted>{} stack{}</summary><code>{}</code></details></td></tr>",
            i + 1,
            value(s.unit, f.value),
            f.share * 100.0,
            esc(&f.function),
            f.stacks,
            if f.stacks == 1 { "" } else { "s" },
            stacks.join("<br>")
        );
    }
    out.push_str("</table><details><summary>by stack</summary>");
    stack_table(out, s);
    out.push_str("</details>");
}

/// Every top stack, named by its own frame.
fn stack_table(out: &mut String, s: &LensSummary) {
    out.push_str("<table><tr><th>#</th><th>value</th><th>share</th><th>where</th></tr>");
    for (i, t) in s.top.iter().enumerate() {
        let share = if s.total > 0 {
            t.value as f64 * 100.0 / s.total as f64
        } else {
            0.0
        };
        let stack: Vec<String> = t
            .frames
            .iter()
            .map(|f| {
                if f.line > 0 {
                    format!("{} {}:{}", esc(&f.function), esc(&f.file), f.line)
                } else {
                    esc(&f.function)
                }
            })
            .collect();
        let stack = if stack.is_empty() {
            t.stack.iter().map(|s| esc(s)).collect()
        } else {
            stack
        };
        let _ = write!(
            out,
            "<tr><td class=n>{}</td><td class=n>{}</td><td class=n>{share:.1}%</td><td>{}<details><summary class=muted>stack</summary><code>{}</code></details></td></tr>",
            i + 1,
            value(s.unit, t.value),
            leaf(t),
            stack.join("<br>")
        );
    }
    out.push_str("</table>");
}

/// Renders the page.
pub fn render(page: &Page<'_>) -> Result<String, svg::SvgError> {
    let s = page.summary;
    let names: Vec<String> = s
        .targets
        .iter()
        .map(|t| {
            format!(
                "{} (pid {})",
                t.exe.rsplit('/').next().unwrap_or(&t.exe),
                t.pid
            )
        })
        .collect();
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\">\
         <title>memtrace: {}</title><style>{STYLE}</style></head><body>\
         <h1>memtrace: {}</h1>",
        esc(&names.join(", ")),
        esc(&names.join(", "))
    );
    let _ = write!(
        out,
        "<p>{:.1} s, ended by {}. {} events; <b>{}</b> dropped (ring buffer full), {} stack errors, \
         {} unresolved frames ({} in Go code), {} stacks cut at junk frames, {} failed holds.</p>",
        s.duration_secs,
        esc(s.ended_by.as_str()),
        s.counters.events,
        s.dropped_events,
        s.counters.stack_errors,
        s.counters.unresolved_frames,
        s.counters.unresolved_go_frames,
        s.counters.truncated_stacks,
        s.counters.hold_failures
    );
    if s.dropped_events > 0 {
        let _ = write!(
            out,
            "<p class=warn>{} events were dropped: totals are low by that many events.</p>",
            s.dropped_events
        );
    }
    if let Some(t) = &s.trigger {
        let _ = write!(
            out,
            "<p>Snapshot trigger: <code>{}</code></p>",
            esc(&t.to_string())
        );
    }
    targets_table(&mut out, &s.targets);
    // Contents.
    out.push_str("<p>");
    for p in page.profiles {
        let _ = write!(out, "<a href=\"#{0}\">{0}</a> · ", p.lens.name());
    }
    out.push_str("<a href=\"#timeline\">RSS timeline</a> · <a href=\"#breakdown\">breakdown</a> · <a href=\"#gc\">GC</a></p>");

    for p in page.profiles {
        let name = p.lens.name();
        let Some(ls) = s.lenses.get(name) else {
            continue;
        };
        let _ = write!(
            out,
            "<h2 id=\"{name}\">{name}: {}</h2><p>{} total",
            esc(p.lens.spec().question),
            value(ls.unit, ls.total)
        );
        if let Some(o) = ls.objects {
            let _ = write!(out, ", {o} objects");
        }
        if let Some(net) = ls
            .extra
            .as_ref()
            .and_then(|e| e.rss())
            .map(|r| r.net_growth)
        {
            let _ = write!(
                out,
                "; net growth {}{} (what became resident and stayed, less what was resident before and was released)",
                if net >= 0 { "+" } else { "-" },
                human_bytes(net.unsigned_abs())
            );
        }
        out.push_str("</p>");
        out.push_str(&inline_svg(&svg::render_static(p, page.mode)?));
        top_table(&mut out, ls);
        if let Some((_, net)) = page.net.filter(|(lens, _)| *lens == p.lens) {
            out.push_str("<h2 id=\"rss-net\">rss-net: growth (red) against release of earlier memory (blue)</h2>");
            out.push_str(&inline_svg(net));
        }
    }
    out.push_str("<h2 id=timeline>RSS timeline</h2>");
    if page.timelines.is_empty() {
        out.push_str("<p class=muted>Recorded with the rss lens only.</p>");
    }
    for (_, svg) in page.timelines {
        out.push_str(&inline_svg(svg.as_bytes()));
    }
    breakdown_table(&mut out, &s.targets);
    gc_section(&mut out, &s.gc);
    let _ = writeln!(
        out,
        "<p class=muted>memtrace {} · the same data is in summary.json, *.pb.gz (go tool pprof) and *.folded.</p></body></html>",
        env!("CARGO_PKG_VERSION")
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_stack_is_named_by_its_own_code() {
        use crate::model::summary::{FrameEntry, TopEntry};
        let f = FrameEntry::at;
        let t = TopEntry::new(
            vec![],
            vec![
                f("main.main", "/src/app/main.go", 10),
                f("main.storeSession", "/src/app/main.go", 27),
                f(
                    "runtime.memclrNoHeapPointers",
                    "/go/src/runtime/memclr.s",
                    60,
                ),
            ],
            1,
        );
        let named = leaf(&t);
        assert!(named.starts_with("main.storeSession"), "{named}");
        assert!(named.contains("main.go:27"), "{named}");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(
            inline_svg(b"<?xml version=\"1.0\"?>\n<svg x=1></svg>"),
            "<svg x=1></svg>"
        );
    }
}
