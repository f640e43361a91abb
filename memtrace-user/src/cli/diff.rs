//! `memtrace diff A B`: what grew and what shrank between two reports.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::model::profile::FrameMode;
use crate::render::{self, diff};

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The baseline: a report directory (from `record` or an agent snapshot)
    /// or a folded-stacks file.
    pub before: PathBuf,
    /// The later profile, same forms.
    pub after: PathBuf,
    /// Which lens's profile to compare when given report directories.
    #[arg(long, default_value = "rss")]
    pub lens: String,
    /// Where to write the differential flame graph.
    #[arg(long, short, default_value = "diff.svg")]
    pub out: PathBuf,
    /// Stacks to list on the terminal for growth and for shrinkage.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Compare by function or by source line (line needs the reports'
    /// `.pb.gz` profiles, which carry the lines).
    #[arg(long, value_enum, default_value_t = FrameMode::Func)]
    pub frames: FrameMode,
}

/// The folded stacks a path names: a report directory's `LENS.pb.gz` (or
/// `LENS.folded`), a `.pb.gz` profile, or a `.folded` file.
fn folded(p: &Path, lens: &str, mode: FrameMode) -> anyhow::Result<String> {
    let pb = |f: &Path| -> anyhow::Result<String> {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let prof = render::pprof::decode(&bytes)
            .with_context(|| format!("{} is not a pprof profile", f.display()))?;
        Ok(render::pprof::folded(&prof, mode))
    };
    if p.is_dir() {
        let (pbf, folded) = (
            p.join(format!("{lens}.pb.gz")),
            p.join(format!("{lens}.folded")),
        );
        if pbf.is_file() {
            return pb(&pbf);
        }
        if !folded.is_file() {
            bail!(
                "{} has no {lens}.folded: pick a lens this report has with --lens",
                p.display()
            );
        }
        return read_folded(&folded, mode);
    }
    if !p.exists() {
        bail!(
            "{} does not exist: give a report directory, a .pb.gz or a .folded file",
            p.display()
        );
    }
    if p.to_string_lossy().ends_with(".pb.gz") {
        return pb(p);
    }
    read_folded(p, mode)
}

fn read_folded(f: &Path, mode: FrameMode) -> anyhow::Result<String> {
    if mode == FrameMode::Line {
        bail!(
            "{} has no source lines: compare by line with report directories or .pb.gz profiles",
            f.display()
        );
    }
    std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let read = |p: &Path| folded(p, &args.lens, args.frames);
    let (before, after) = (read(&args.before)?, read(&args.after)?);
    let mut deltas = diff::merge(&before, &after)?;
    let unit = if args.lens == "goroutines" {
        "goroutines"
    } else {
        "bytes"
    };
    let title = format!(
        "{} → {}: {} (red grew, blue shrank)",
        args.before.display(),
        args.after.display(),
        args.lens
    );
    let svg = diff::render(&deltas, &title, unit)?;
    std::fs::write(&args.out, svg)
        .with_context(|| format!("cannot write {}: choose another --out", args.out.display()))?;
    deltas.sort_by_key(|d| std::cmp::Reverse(d.change()));
    let (b, a): (u64, u64) = deltas
        .iter()
        .fold((0, 0), |(b, a), d| (b + d.before, a + d.after));
    println!(
        "{}: {b} → {a} {unit} ({:+})",
        args.lens,
        i128::from(a) - i128::from(b)
    );
    let show = |d: &diff::Delta| {
        let leaf = d.stack.rsplit(';').next().unwrap_or(&d.stack);
        println!("  {:+14}  {leaf}  ({} → {})", d.change(), d.before, d.after);
    };
    println!("grew most:");
    deltas
        .iter()
        .filter(|d| d.change() > 0)
        .take(args.top)
        .for_each(show);
    println!("shrank most:");
    deltas
        .iter()
        .rev()
        .filter(|d| d.change() < 0)
        .take(args.top)
        .for_each(show);
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
