//! The goroutines lens's reads of the target: goroutines that existed before
//! tracing (from `runtime.allgs`, with `runtime.g` offsets from DWARF), and
//! the stack size of live ones.

use std::os::unix::fs::FileExt as _;

use crate::aggregate::GoroutineAgg;
use crate::decode::Resolver;
use crate::goruntime::GoBinary;
use crate::gtypes::{G_DEAD, G_SCAN};
use crate::procfs::{self, MapEntry};
use crate::symbolize::EXISTING_GOROUTINE;

fn word(mem: &std::fs::File, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read_exact_at(&mut b, addr).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Adds the target's live goroutines to `agg`, keyed by a stack of their
/// start function, the `go` statement's pc and a "[created before tracing]"
/// root. Returns how many were found.
pub fn add_existing(
    pid: u32,
    bin: &GoBinary,
    exe_maps: &[MapEntry],
    resolver: &mut Resolver,
    agg: &mut GoroutineAgg,
) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let allgs = bin
        .allgs
        .and_then(|a| bin.runtime_addr(a, exe_maps))
        .context("runtime.allgs not found")?;
    let mem = std::fs::File::open(procfs::proc_dir(pid).join("mem"))?;
    let (ptr, len) = (
        word(&mem, allgs).context("reading allgs")?,
        word(&mem, allgs + 8).context("reading allgs")?,
    );
    let mut found = 0;
    for i in 0..len.min(10_000_000) {
        let Some(g) = word(&mem, ptr + 8 * i).filter(|g| *g != 0) else {
            continue;
        };
        let frames = match bin.g_layout {
            Some(l) => {
                let mut st = [0u8; 4];
                if mem.read_exact_at(&mut st, g + l.atomicstatus).is_err() {
                    continue;
                }
                let status = u32::from_le_bytes(st) & !G_SCAN;
                if status == G_DEAD || status == 0 {
                    continue;
                }
                let start = word(&mem, g + l.startpc).unwrap_or(0);
                let gopc = word(&mem, g + l.gopc).unwrap_or(0);
                vec![start, gopc, EXISTING_GOROUTINE]
            }
            // Without DWARF the state is unknown: count every goroutine.
            None => vec![EXISTING_GOROUTINE],
        };
        let id = resolver.intern(pid, frames);
        agg.existing((pid, id), g);
        found += 1;
    }
    Ok(found)
}

/// `hi - lo` of a goroutine's stack (`runtime.g` starts with `stack{lo, hi}`).
pub fn stack_bytes(pid: u32, g: u64) -> Option<u64> {
    let mem = std::fs::File::open(procfs::proc_dir(pid).join("mem")).ok()?;
    let (lo, hi) = (word(&mem, g)?, word(&mem, g + 8)?);
    (hi > lo && hi - lo <= 1 << 30).then_some(hi - lo)
}
