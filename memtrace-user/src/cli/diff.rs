//! `memtrace diff A B`: what grew and what shrank between two reports.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::render::diff;

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
}

/// The folded file a path names: itself, or `LENS.folded` in a directory.
fn folded_path(p: &Path, lens: &str) -> anyhow::Result<PathBuf> {
    if p.is_dir() {
        let f = p.join(format!("{lens}.folded"));
        if !f.is_file() {
            bail!(
                "{} has no {lens}.folded: pick a lens this report has with --lens",
                p.display()
            );
        }
        return Ok(f);
    }
    if !p.exists() {
        bail!(
            "{} does not exist: give a report directory or a .folded file",
            p.display()
        );
    }
    Ok(p.to_owned())
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let read = |p: &Path| -> anyhow::Result<String> {
        let f = folded_path(p, &args.lens)?;
        std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))
    };
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
