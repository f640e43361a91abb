//! alloc-exact on the oldest Go release beside the newest: the same
//! allocation loop built with Go 1.19 (whose allocator probe sits on the
//! stack check's `JBE`) and with the newest Go (on `PUSHQ BP`), each run
//! untraced and traced, interleaved. The goal: Go 1.19's slowdown at most
//! 1.3× Go 1.27's, with the same object count (±0.1% of the program's own
//! `Mallocs`).

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::bench::{alloc_ns, median};
use crate::bootstrap::newest;

const OBJECTS: &str = "1000000";
const ROUNDS: usize = 7;

pub fn alloc_exact_by_version(
    memtrace: &Path,
    fixtures_root: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let versions = ["1.19", newest()];
    let args = ["-objects", OBJECTS, "-maps", "0", "-inlined", "0"];
    let mut slowdowns = vec![Vec::new(); versions.len()];
    let mut counts = vec![Vec::new(); versions.len()];
    for round in 0..ROUNDS {
        for (i, v) in versions.iter().enumerate() {
            let bin = fixtures_root.join(format!("go{v}")).join("allocs");
            let plain = Command::new(&bin).args(args).output()?;
            let untraced = alloc_ns(&String::from_utf8_lossy(&plain.stdout))?;
            let dir = out.join(format!("versions-{v}-{round}"));
            let traced = Command::new(memtrace)
                .args(["record", "--lens", "alloc-exact", "--out"])
                .arg(&dir)
                .arg("--")
                .arg(&bin)
                .args(args)
                .output()?;
            anyhow::ensure!(
                traced.status.success(),
                "memtrace on go{v}: {}",
                String::from_utf8_lossy(&traced.stderr)
            );
            let stdout = String::from_utf8_lossy(&traced.stdout);
            slowdowns[i].push(alloc_ns(&stdout)? / untraced);
            let mallocs: f64 = stdout
                .split_ascii_whitespace()
                .find_map(|w| w.strip_prefix("mallocs_total="))
                .and_then(|n| n.parse().ok())
                .context("fixture printed no mallocs_total=")?;
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("summary.json"))?)?;
            let objects = summary["lenses"]["alloc-exact"]["objects"]
                .as_f64()
                .context("no alloc-exact objects")?;
            counts[i].push(objects / mallocs);
        }
    }
    println!("\nalloc-exact by Go release ({OBJECTS} allocations, {ROUNDS} interleaved rounds):");
    println!("| Go | slowdown median (min-max) | objects / Mallocs median (min-max) |");
    println!("|---|---|---|");
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(f64::MIN, f64::max);
        (median(v), lo, hi)
    };
    for (i, v) in versions.iter().enumerate() {
        let (m, lo, hi) = spread(&slowdowns[i]);
        let (c, clo, chi) = spread(&counts[i]);
        println!("| {v} | {m:.1}x ({lo:.1}-{hi:.1}) | {c:.4} ({clo:.4}-{chi:.4}) |");
    }
    let ratio = median(&slowdowns[0]) / median(&slowdowns[1]);
    println!(
        "Go 1.19's slowdown is {ratio:.2}x Go {}'s (goal: at most 1.3x)",
        versions[1]
    );
    Ok(())
}
