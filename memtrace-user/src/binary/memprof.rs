//! The Go runtime's own memory profile, read from outside the process.
//!
//! Go samples heap allocations (on average one per `runtime.MemProfileRate`
//! bytes) into buckets, one per (stack, size), and records sampled frees
//! when the GC sweeps them. That is what pprof's heap profile shows. The
//! `alloc` and `heap` lenses read the same buckets through `/proc/PID/mem`:
//! no probe fires per allocation, so the cost is the runtime's own sampling.
//! A binary that does not link pprof has its rate set to 0 by the linker;
//! memtrace then writes a rate for the window (announced) and restores the
//! original when it stops.
//!
//! Layout (`runtime/mprof.go`): `runtime.mbuckets` points to the first
//! bucket; buckets chain through `allnext`. A bucket is `{next, allnext, typ,
//! hash, size, nstk}` (six words), then `nstk` return addresses, then a
//! `memRecord`: `active` and three `future` cycles of `{allocs, frees}`, plus
//! `{alloc_bytes, free_bytes}` before Go 1.27.

use std::collections::HashMap;

use crate::host::remote::RemoteMemory;

const MEM_PROFILE: u64 = 1;
const MAX_BUCKETS: usize = 1 << 20;
const MAX_STACK: u64 = 1024;

/// Words per `memRecordCycle` for a Go version (`go1.X...`).
pub fn cycle_words(go_version: &str) -> Option<usize> {
    let minor: u32 = go_version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(if minor >= 27 { 2 } else { 4 })
}

/// Counts of one memRecordCycle (bytes derived from the bucket's size when
/// the runtime does not keep them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cycle {
    pub allocs: u64,
    pub frees: u64,
    pub alloc_bytes: u64,
    pub free_bytes: u64,
}

impl Cycle {
    fn add(&mut self, o: &Cycle) {
        self.allocs = self.allocs.saturating_add(o.allocs);
        self.frees = self.frees.saturating_add(o.frees);
        self.alloc_bytes = self.alloc_bytes.saturating_add(o.alloc_bytes);
        self.free_bytes = self.free_bytes.saturating_add(o.free_bytes);
    }
}

/// One memory-profile bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Address of the bucket (stable: buckets are never freed).
    pub addr: u64,
    /// Return addresses, leaf first.
    pub stack: Vec<u64>,
    pub size: u64,
    /// As of the last completed GC cycle (what pprof reports).
    pub active: Cycle,
    /// Everything recorded so far, published or not.
    pub total: Cycle,
}

/// Walks the bucket list starting at `*mbuckets`. The target's memory is
/// not trusted: a list that comes back to a bucket, a stack deeper than
/// the runtime keeps, or a header that is not a memory-profile bucket's is
/// an error, and at most a million buckets are read.
pub fn read_buckets(
    mem: &dyn RemoteMemory,
    mbuckets: u64,
    cycle_words: usize,
) -> std::io::Result<Vec<Bucket>> {
    let bad = |b: u64, what: &str| {
        std::io::Error::other(format!(
            "unexpected memory-profile bucket at {b:#x}: {what}"
        ))
    };
    if !(2..=4).contains(&cycle_words) {
        return Err(std::io::Error::other(format!(
            "{cycle_words} words per memory-profile cycle"
        )));
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut b = mem.read_u64(mbuckets)?;
    while b != 0 && out.len() < MAX_BUCKETS {
        if !seen.insert(b) {
            return Err(bad(b, "the list comes back to it"));
        }
        let h = mem.read_words(b, 6)?;
        let (allnext, typ, size, nstk) = (h[1], h[2], h[4], h[5]);
        if typ != MEM_PROFILE || nstk > MAX_STACK {
            return Err(bad(b, "not a memory-profile bucket"));
        }
        let at = b.checked_add(48).ok_or_else(|| bad(b, "address"))?;
        let w = mem.read_words(at, nstk as usize + 4 * cycle_words)?;
        let stack = w[..nstk as usize].to_vec();
        let cycles: Vec<Cycle> = w[nstk as usize..]
            .chunks_exact(cycle_words)
            .map(|c| {
                let (allocs, frees) = (c[0], c[1]);
                let (alloc_bytes, free_bytes) = if cycle_words >= 4 {
                    (c[2], c[3])
                } else {
                    (allocs.saturating_mul(size), frees.saturating_mul(size))
                };
                Cycle {
                    allocs,
                    frees,
                    alloc_bytes,
                    free_bytes,
                }
            })
            .collect();
        let mut total = Cycle::default();
        cycles.iter().for_each(|c| total.add(c));
        out.push(Bucket {
            addr: b,
            stack,
            size,
            active: cycles[0],
            total,
        });
        b = allnext;
    }
    Ok(out)
}

/// pprof's unbiased estimate for Poisson-sampled allocations: returns
/// (objects, bytes) for `count` samples totalling `bytes` at `rate`.
pub fn scale(count: u64, bytes: u64, rate: u64) -> (u64, u64) {
    if count == 0 || bytes == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, bytes);
    }
    let avg = bytes as f64 / count as f64;
    let s = 1.0 / (1.0 - (-avg / rate as f64).exp());
    (
        (count as f64 * s).round() as u64,
        (bytes as f64 * s).round() as u64,
    )
}

/// Estimated allocations per bucket between two snapshots: (objects, bytes).
pub fn alloc_delta<'a>(
    start: &[Bucket],
    end: &'a [Bucket],
    rate: u64,
) -> Vec<(&'a [u64], u64, u64)> {
    let before: HashMap<u64, &Cycle> = start.iter().map(|b| (b.addr, &b.total)).collect();
    end.iter()
        .filter_map(|b| {
            let zero = Cycle::default();
            let s = before.get(&b.addr).copied().unwrap_or(&zero);
            let n = b.total.allocs.saturating_sub(s.allocs);
            let bytes = b.total.alloc_bytes.saturating_sub(s.alloc_bytes);
            let (n, bytes) = scale(n, bytes, rate);
            (bytes > 0).then_some((b.stack.as_slice(), bytes, n))
        })
        .collect()
}

/// Estimated live heap per bucket: (objects, bytes). Like pprof, it counts
/// allocations as of the last completed GC; unlike pprof, it also subtracts
/// the frees the sweeper recorded since, so garbage of the last cycle that is
/// already freed does not show as live.
pub fn inuse(end: &[Bucket], rate: u64) -> Vec<(&'_ [u64], u64, u64)> {
    end.iter()
        .filter_map(|b| {
            let n = b.active.allocs.saturating_sub(b.total.frees);
            let bytes = b.active.alloc_bytes.saturating_sub(b.total.free_bytes);
            let (n, bytes) = scale(n, bytes, rate);
            (bytes > 0).then_some((b.stack.as_slice(), bytes, n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::remote::FakeMemory;

    /// A fake bucket: stack, object size, and (allocs, frees) of the active
    /// and three future cycles.
    type FakeBucket = (Vec<u64>, u64, [[u64; 2]; 4]);

    /// Lays out buckets as the runtime does, at fake addresses.
    fn memory(buckets: &[FakeBucket], cycle_words: usize) -> (FakeMemory, u64) {
        let mem = FakeMemory::default();
        let base = 0x10_0000u64;
        let mut addrs = Vec::new();
        let mut at = base;
        for (stack, _, _) in buckets {
            addrs.push(at);
            at += 48 + 8 * stack.len() as u64 + 32 * cycle_words as u64 + 64;
        }
        for (i, (stack, size, cycles)) in buckets.iter().enumerate() {
            let next = addrs.get(i + 1).copied().unwrap_or(0);
            let mut b: Vec<u64> = vec![0, next, MEM_PROFILE, 0xabc, *size, stack.len() as u64];
            b.extend(stack);
            for c in cycles {
                b.extend([c[0], c[1]]);
                if cycle_words == 4 {
                    b.extend([c[0] * size, c[1] * size]);
                }
            }
            mem.map_words(addrs[i], &b);
        }
        let head = 0x5000u64;
        mem.map_words(head, &[addrs[0]]);
        (mem, head)
    }

    #[test]
    fn hostile_lists_are_refused() {
        let bucket = |at: u64| vec![(vec![at], 64, [[1, 0], [0, 0], [0, 0], [0, 0]])];
        // Two buckets whose allnext point at each other.
        let (mem, head) = memory(
            &[bucket(0x401000)[0].clone(), bucket(0x402000)[0].clone()],
            4,
        );
        let first = mem.read_u64(head).unwrap();
        let second = mem.read_u64(first + 8).unwrap();
        mem.write_u64(second + 8, first).unwrap();
        let e = read_buckets(&mem, head, 4).unwrap_err().to_string();
        assert!(e.contains("comes back"), "{e}");
        // A stack deeper than the runtime keeps.
        let (mem, head) = memory(&bucket(0x401000), 4);
        let first = mem.read_u64(head).unwrap();
        mem.write_u64(first + 40, 1 << 40).unwrap();
        assert!(read_buckets(&mem, head, 4).is_err());
        // A bucket at the top of the address space; a layout that is none.
        let mem = FakeMemory::default();
        mem.map_words(0x5000, &[u64::MAX - 7]);
        mem.map_words(u64::MAX - 7 - 40, &[0, 0, MEM_PROFILE, 0, 8, 0]);
        assert!(read_buckets(&mem, 0x5000, 4).is_err());
        assert!(read_buckets(&mem, 0x5000, 0).is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(cycle_words("go1.21.13"), Some(4));
        assert_eq!(cycle_words("go1.26.6"), Some(4));
        assert_eq!(cycle_words("go1.27.3"), Some(2));
        assert_eq!(cycle_words("devel"), None);
    }

    #[test]
    fn reads_both_layouts() {
        for cw in [2, 4] {
            let (mem, head) = memory(
                &[
                    (
                        vec![0x401000, 0x402000],
                        64,
                        [[10, 4], [1, 0], [2, 1], [0, 0]],
                    ),
                    (vec![0x403000], 1024, [[3, 0], [0, 0], [0, 0], [5, 0]]),
                ],
                cw,
            );
            let b = read_buckets(&mem, head, cw).unwrap();
            assert_eq!(b.len(), 2);
            assert_eq!(b[0].stack, vec![0x401000, 0x402000]);
            assert_eq!(
                b[0].active,
                Cycle {
                    allocs: 10,
                    frees: 4,
                    alloc_bytes: 640,
                    free_bytes: 256
                }
            );
            assert_eq!(b[0].total.allocs, 13);
            assert_eq!(b[1].total.alloc_bytes, 8 * 1024);
            // rate 1 = every allocation sampled: no scaling.
            // Published: 10 allocs; frees so far: 4 + 0 + 1 + 0.
            let live = inuse(&b, 1);
            assert_eq!(live[0], (&[0x401000u64, 0x402000][..], 5 * 64, 5));
            let grown = alloc_delta(&b[..1], &b, 1);
            assert_eq!(grown.len(), 1, "unchanged buckets are left out");
            assert_eq!(grown[0], (&[0x403000u64][..], 8 * 1024, 8));
        }
    }

    #[test]
    fn scaling_matches_pprof() {
        // One 512 KiB-rate sample of a 64-byte object stands for ~8192.5 of
        // them: 1 / (1 - e^(-64/524288)).
        let (n, bytes) = scale(1, 64, 512 * 1024);
        assert!((8192..=8193).contains(&n), "{n}");
        assert_eq!(bytes, 524_320);
        // Objects far larger than the rate are sampled every time.
        assert_eq!(scale(2, 20 << 20, 512 * 1024), (2, 20 << 20));
        assert_eq!(scale(0, 0, 512 * 1024), (0, 0));
    }
}
