//! Symbolization speed, run by `cargo xtask bench`: resolves N unique
//! program counters of a Go binary to frames with their file and line
//! (inlined frames included) from a cold start (reading and parsing the
//! file counts), then the same pcs again from the cache; for comparison,
//! blazesym resolving them (with lines) from the unstripped build's symbol
//! table and DWARF.
//!
//! Usage: symbolize_bench GO_BINARY [UNSTRIPPED_BUILD] [N]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use memtrace_user::binary::gopclntab::GoTable;
use memtrace_user::binary::symbolize::{Image, Symbolizer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(
        args.next()
            .expect("usage: symbolize_bench GO_BINARY [PEER] [N]"),
    );
    let peer = args.next().map(PathBuf::from);
    let n: usize = args.next().map_or(Ok(10_000), |s| s.parse())?;

    // The pcs: spread over every function, several per function, so they
    // are unique and land both in plain code and in inlined bodies.
    let table = GoTable::parse(std::fs::read(&bin)?)?;
    let funcs: Vec<(u64, u64)> = table.functions().map(|f| (f.entry, f.end)).collect();
    let per = n.div_ceil(funcs.len()).max(1) as u64;
    let mut pcs = Vec::with_capacity(n);
    'fill: for k in 0..per {
        for &(entry, end) in &funcs {
            let len = end - entry;
            if k < len {
                pcs.push(entry + k * len / per);
                if pcs.len() == n {
                    break 'fill;
                }
            }
        }
    }
    pcs.sort_unstable();
    pcs.dedup();
    drop(table);

    let image = Image {
        exe: bin.clone(),
        maps: None,
        root: None,
    };
    let t0 = Instant::now();
    let mut sym = Symbolizer::default();
    let table = Arc::new(GoTable::parse(std::fs::read(&bin)?)?);
    sym.add_go_binary(&bin, table);
    let (mut frames, mut with_lines) = (0usize, 0usize);
    for &pc in &pcs {
        for loc in sym.stack(&image, &[pc]) {
            frames += loc.frames.len();
            with_lines += loc.frames.iter().filter(|f| f.line > 0).count();
        }
    }
    let cold = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for &pc in &pcs {
        std::hint::black_box(sym.stack(&image, &[pc]));
    }
    let warm = t1.elapsed().as_secs_f64();
    println!(
        "pclntab: {} unique pcs ({} frames with inlining, {} with a line, {} unresolved) in {:.1} ms cold, {:.1} ms cached",
        pcs.len(),
        frames,
        with_lines,
        sym.unresolved,
        cold * 1e3,
        warm * 1e3
    );
    if let Some(peer) = peer {
        let image = Image {
            exe: peer,
            maps: None,
            root: None,
        };
        let mut blaze = Symbolizer::default();
        let t2 = Instant::now();
        for &pc in &pcs {
            std::hint::black_box(blaze.stack(&image, &[pc]));
        }
        let b = t2.elapsed().as_secs_f64();
        println!(
            "blazesym (symtab + DWARF): same pcs in {:.1} ms cold; pclntab/blazesym = {:.2}x",
            b * 1e3,
            cold / b
        );
    }
    Ok(())
}
