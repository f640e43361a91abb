//! Turns aggregated (process, stack id) cells into symbolized profiles and
//! writes them out. Pure apart from the final file writes: stacks come in
//! through a closure, so tests need no kernel.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::binary::symbolize::{
    hide_allocator_leaf, pop_leaf_frames, Image, StackLoc, Symbolizer, STACK_UNAVAILABLE,
};
use crate::lens::cell::Cell;
use crate::model::labels::LabelSet;
use crate::model::lens::Lens;
use crate::model::profile::{Frame, FrameMode, Location, Locations, Mapping, Profile, Sample};
use crate::model::stack::{Stack, StackKey};
use crate::model::summary::Summary;
use crate::render;

/// Symbolizes every stack of one lens into a profile of locations.
pub fn build_profile(
    lens: Lens,
    cells: &HashMap<StackKey, Cell>,
    images: &HashMap<u32, (String, Image)>,
    stack_of: &dyn Fn(Stack) -> (Option<Vec<u64>>, LabelSet),
    sym: &mut Symbolizer,
    duration_secs: f64,
    target: String,
) -> Profile {
    let multi = images.len() > 1;
    let mut locs = Locations::default();
    let mut mappings = Mappings::default();
    let samples: Vec<Sample> = cells
        .iter()
        .map(|(&(pid, stack), cell)| {
            let image = images.get(&pid).map(|(_, i)| i);
            let (ips, labels) = stack_of(stack);
            let mut stack_locs = match (ips, image) {
                (Some(ips), Some(image)) if !ips.is_empty() => sym.stack(image, &ips),
                _ => vec![named(&format!("{STACK_UNAVAILABLE}: {}", stack.reason()))],
            };
            if lens.spec().allocation_stacks {
                hide_allocator_leaf(&mut stack_locs);
            }
            if lens.spec().creation_stacks {
                hide_newproc_frames(&mut stack_locs);
            }
            if multi {
                let name = images.get(&pid).map_or("?", |(n, _)| n.as_str());
                stack_locs.insert(0, named(&format!("{name} (pid {pid})")));
            }
            let stack = stack_locs
                .into_iter()
                .map(|l| {
                    let mapping = match (image, l.address) {
                        (Some(image), a) if a != 0 => mappings.of(sym, image, a),
                        _ => None,
                    };
                    locs.intern(Location {
                        address: l.address,
                        mapping,
                        frames: l.frames,
                    })
                })
                .collect();
            Sample {
                stack,
                value: cell.bytes,
                objects: cell.objects,
                requested: cell.requested,
                labels,
            }
        })
        .collect();
    Profile::new(
        lens,
        locs.locations,
        mappings.list,
        samples,
        duration_secs,
        target,
    )
}

fn named(name: &str) -> StackLoc {
    StackLoc {
        address: 0,
        frames: vec![Frame::named(name)],
    }
}

/// The binaries of a profile, each once, the executable first.
#[derive(Default)]
struct Mappings {
    list: Vec<Mapping>,
    index: HashMap<Mapping, usize>,
}

impl Mappings {
    /// The mapping holding `addr` in `image`.
    fn of(&mut self, sym: &Symbolizer, image: &Image, addr: u64) -> Option<usize> {
        let m = sym.mapping_of(image, addr)?;
        let next = self.list.len();
        let i = *self.index.entry(m.clone()).or_insert(next);
        if i == next {
            self.list.push(m);
        }
        Some(i)
    }
}

/// In a goroutine's creation stack (root first, the start function last),
/// drops the runtime's `go`-statement plumbing between the creator and the
/// start function.
pub fn hide_newproc_frames(stack: &mut Vec<StackLoc>) {
    let Some(start) = stack.pop() else { return };
    pop_leaf_frames(stack, 0, |f| {
        matches!(
            f,
            "runtime.newproc1"
                | "runtime.newproc.func1"
                | "runtime.systemstack"
                | "runtime.newproc"
        )
    });
    stack.push(start);
}

/// A report file that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Svg(#[from] render::svg::SvgError),
    #[error(transparent)]
    Diff(#[from] render::diff::DiffError),
    #[error("cannot encode summary.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Paths written for one lens.
pub struct Written {
    pub svg: PathBuf,
    pub folded: PathBuf,
    pub pprof: PathBuf,
}

/// Writes `LENS.svg`, `LENS.folded` (frames named as `mode` says, split by
/// the labels `split_by` names) and `LENS.pb.gz` (labels as sample labels)
/// into `out`.
pub fn write_profile(
    out: &Path,
    p: &Profile,
    mode: FrameMode,
    split_by: &[String],
) -> Result<Written, WriteError> {
    let w = Written {
        svg: out.join(format!("{}.svg", p.lens)),
        folded: out.join(format!("{}.folded", p.lens)),
        pprof: out.join(format!("{}.pb.gz", p.lens)),
    };
    let split = p.split_by_labels(split_by);
    write_file(&w.svg, &render::svg::render(&split, mode)?)?;
    write_file(&w.folded, render::folded::render(&split, mode).as_bytes())?;
    let pb = render::pprof::render(p).map_err(|source| WriteError::Io {
        path: w.pprof.clone(),
        source,
    })?;
    write_file(&w.pprof, &pb)?;
    Ok(w)
}

pub fn write_summary(out: &Path, s: &Summary) -> Result<PathBuf, WriteError> {
    let path = out.join("summary.json");
    let mut json = serde_json::to_vec_pretty(s)?;
    json.push(b'\n');
    write_file(&path, &json)?;
    Ok(path)
}

/// What [`write_report`] wrote.
pub struct WrittenReport {
    pub profiles: Vec<Written>,
    /// `rss-net.svg` and `rss-net.folded`, with the rss lens.
    pub net: Option<(PathBuf, PathBuf)>,
    pub summary: PathBuf,
    pub timelines: Vec<PathBuf>,
    /// `index.html`: the whole report on one page.
    pub page: PathBuf,
}

/// Writes the report of an OOM-killed target into `dir/PID-UNIXTIME/`
/// (the kill's time); returns that directory, or a one-line reason.
pub fn write_oom_report(
    report: &crate::model::report::Report,
    pid: u32,
    dir: &Path,
    mode: FrameMode,
) -> Result<std::path::PathBuf, String> {
    let unix = report
        .summary
        .targets
        .iter()
        .find(|t| t.pid == pid)
        .and_then(|t| t.oom_kill.as_ref())
        .map_or(0, |o| o.unix_time);
    let dir = dir.join(format!("{pid}-{unix}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_report(&dir, report, mode)
        .map(|_| dir.clone())
        .map_err(|e| {
            format!(
                "its report could not be written to {}: {e:#}",
                dir.display()
            )
        })
}

/// Writes a whole report into `out`: every lens's files, `summary.json`,
/// `timeline.svg` (`timeline-PID.svg` when there are several) and
/// `index.html`.
pub fn write_report(
    out: &Path,
    r: &crate::model::report::Report,
    mode: FrameMode,
) -> Result<WrittenReport, WriteError> {
    let profiles = r
        .profiles
        .iter()
        .map(|p| write_profile(out, p, mode, &r.split_by))
        .collect::<Result<_, _>>()?;
    let summary = write_summary(out, &r.summary)?;
    let net = match r.net() {
        Some((grew, released)) => Some(write_net(out, grew, released, &r.summary, mode)?),
        None => None,
    };
    let mut timelines = Vec::new();
    for t in &r.timelines {
        let name = if r.timelines.len() == 1 {
            "timeline.svg".to_string()
        } else {
            format!("timeline-{}.svg", t.pid)
        };
        let path = out.join(name);
        write_file(
            &path,
            render::timeline::render(&t.title, &t.points).as_bytes(),
        )?;
        timelines.push(path);
    }
    let page = out.join("index.html");
    write_file(&page, html_page(r, mode)?.as_bytes())?;
    Ok(WrittenReport {
        profiles,
        net,
        summary,
        timelines,
        page,
    })
}

/// The rss-net differential flame graph (growth red, release of
/// pre-window memory blue) and its folded lines; `inline` leaves out the
/// script, for the HTML page.
fn net_parts(
    grew: &Profile,
    released: &Profile,
    s: &Summary,
    mode: FrameMode,
    inline: bool,
) -> Result<(Vec<u8>, String), WriteError> {
    let deltas = render::diff::net(grew, released, mode);
    let net = s.lenses[grew.lens.name()]
        .extra
        .as_ref()
        .and_then(|e| e.rss())
        .map_or(0, |r| r.net_growth);
    let title = format!(
        "memtrace rss-net: {} ({:.1} s): net {}{} (red grew, blue released memory resident before tracing; widths: bytes grown plus released)",
        grew.target,
        grew.duration_secs,
        if net >= 0 { "+" } else { "-" },
        human_bytes(net.unsigned_abs())
    );
    let svg = if deltas.is_empty() {
        let empty = Profile::from_names(grew.lens, [], grew.duration_secs, title);
        render::svg::render(&empty, mode)?
    } else if inline {
        render::diff::render_static(&deltas, &title, "bytes")?
    } else {
        render::diff::render(&deltas, &title, "bytes")?
    };
    Ok((svg, render::diff::folded(&deltas)))
}

/// `rss-net.svg` and `rss-net.folded`.
fn write_net(
    out: &Path,
    grew: &Profile,
    released: &Profile,
    s: &Summary,
    mode: FrameMode,
) -> Result<(PathBuf, PathBuf), WriteError> {
    let (svg, folded) = net_parts(grew, released, s, mode, false)?;
    let svg_path = out.join("rss-net.svg");
    let folded_path = out.join("rss-net.folded");
    write_file(&svg_path, &svg)?;
    write_file(&folded_path, folded.as_bytes())?;
    Ok((svg_path, folded_path))
}

/// The whole report as one self-contained HTML page (`index.html`, and the
/// agent's `/profiles/PID/index.html`).
pub fn html_page(r: &crate::model::report::Report, mode: FrameMode) -> Result<String, WriteError> {
    let net = match r.net() {
        Some((grew, released)) => Some((
            grew.lens,
            net_parts(grew, released, &r.summary, mode, true)?.0,
        )),
        None => None,
    };
    let timelines: Vec<(String, String)> = r
        .timelines
        .iter()
        .map(|t| {
            (
                t.title.clone(),
                render::timeline::render(&t.title, &t.points),
            )
        })
        .collect();
    Ok(render::html::render(&render::html::Page {
        summary: &r.summary,
        profiles: &r.profiles,
        net: net.as_ref().map(|(lens, svg)| (*lens, svg.as_slice())),
        timelines: &timelines,
        mode,
    })?)
}

/// Writes through a temporary file so a reader never sees half a report.
fn write_file(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(tmp, path).map_err(io)
}

pub use crate::model::profile::is_plumbing;

/// A short terminal rendering of a stack: up to `n` frames ending at the
/// deepest frame of the program's own code, then how many plumbing frames
/// follow it.
pub fn short_stack(frames: &[String], n: usize) -> String {
    let end = frames
        .iter()
        .rposition(|f| !is_plumbing(f))
        .map_or(frames.len(), |i| i + 1);
    let start = end.saturating_sub(n);
    let mut s = frames[start..end].join(" > ");
    if start > 0 {
        s.insert_str(0, "… > ");
    }
    let rest = frames.len() - end;
    if rest > 0 {
        s.push_str(&format!(" > … ({rest} runtime frames)"));
    }
    s
}

pub use crate::model::profile::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_stacks_keep_their_bytes() {
        let cells = HashMap::from([(
            (1, Stack::Failed(14)),
            Cell {
                bytes: 100,
                objects: 1,
                requested: 90,
            },
        )]);
        let images = HashMap::from([(
            1,
            (
                "app".to_string(),
                Image {
                    exe: "/app".into(),
                    maps: None,
                    root: None,
                },
            ),
        )]);
        let mut sym = Symbolizer::default();
        let p = build_profile(
            Lens::Mmap,
            &cells,
            &images,
            &|_| (None, Vec::new()),
            &mut sym,
            1.0,
            "t".into(),
        );
        assert_eq!(p.samples.len(), 1);
        assert_eq!(
            p.named(FrameMode::Func)[0].names,
            vec![format!("{STACK_UNAVAILABLE}: user stack unreadable")]
        );
        assert_eq!(p.total(), 100);
    }

    #[test]
    fn goroutine_stacks_lose_newproc_plumbing() {
        let mut s: Vec<StackLoc> = [
            "main.main",
            "main.handle",
            "runtime.newproc",
            "runtime.systemstack",
            "runtime.newproc.func1",
            "runtime.newproc1",
            "main.worker",
        ]
        .map(named)
        .to_vec();
        hide_newproc_frames(&mut s);
        let names: Vec<&str> = s.iter().map(|l| &*l.frames[0].function).collect();
        assert_eq!(names, ["main.main", "main.handle", "main.worker"]);
    }

    #[test]
    fn formats() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        let f: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(short_stack(&f, 2), "… > b > c");
        assert_eq!(short_stack(&f, 5), "a > b > c");
        let m: Vec<String> = [
            "runtime.main",
            "main.main",
            "main.grow",
            "syscall.Mmap",
            "runtime.sysMmap",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            short_stack(&m, 2),
            "… > main.main > main.grow > … (2 runtime frames)"
        );
        let rt: Vec<String> = ["runtime.a", "runtime.b"].map(String::from).to_vec();
        assert_eq!(short_stack(&rt, 1), "… > runtime.b");
    }
}
