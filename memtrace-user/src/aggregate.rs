//! Per-lens aggregation of decoded events, keyed by (process, stack id).
//! Symbol names are attached later, once, per distinct stack.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use memtrace_common::EventKind;

use crate::decode::Decoded;

/// A stack as the kernel recorded it: the process and its stack-map id
/// (negative ids are errors, kept so their bytes stay visible).
pub type StackKey = (u32, i32);

/// Value summed per stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub bytes: u64,
    pub objects: u64,
}

/// `alloc-exact`: every heap allocation, summed by stack.
pub struct AllocAgg {
    pub by_stack: HashMap<StackKey, Cell>,
    pub sizes: Histogram<u64>,
}

impl Default for AllocAgg {
    fn default() -> Self {
        Self {
            by_stack: HashMap::new(),
            sizes: Histogram::new(3).expect("3 significant digits is valid"),
        }
    }
}

impl AllocAgg {
    pub fn add(&mut self, key: StackKey, size: u64) {
        let c = self.by_stack.entry(key).or_default();
        c.bytes += size;
        c.objects += 1;
        self.sizes.saturating_record(size.max(1));
    }

    pub fn totals(&self) -> Cell {
        self.by_stack.values().fold(Cell::default(), |a, c| Cell {
            bytes: a.bytes + c.bytes,
            objects: a.objects + c.objects,
        })
    }
}

const PAGE: u64 = 4096;
const PROT_NONE: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    key: StackKey,
    /// PROT_NONE reservations are tracked (a later MAP_FIXED over them
    /// replaces them) but hold no usable memory, so they count zero.
    counts: bool,
}

/// `mmap`: address ranges mapped during the window and not unmapped since,
/// per process, as non-overlapping regions.
#[derive(Default)]
pub struct MmapAgg {
    regions: HashMap<u32, BTreeMap<u64, Region>>,
    pub unmapped_bytes: u64,
}

impl MmapAgg {
    pub fn map(&mut self, key: StackKey, addr: u64, len: u64, prot: u64) {
        let len = len.div_ceil(PAGE) * PAGE;
        if len == 0 {
            return;
        }
        self.remove(key.0, addr, addr + len);
        self.regions.entry(key.0).or_default().insert(
            addr,
            Region {
                end: addr + len,
                key,
                counts: prot != PROT_NONE,
            },
        );
    }

    pub fn unmap(&mut self, tgid: u32, addr: u64, len: u64) {
        let len = len.div_ceil(PAGE) * PAGE;
        self.unmapped_bytes += self.remove(tgid, addr, addr + len);
    }

    /// Removes `[start, end)` from the process's regions, splitting the ones
    /// that straddle the edges; returns the counted bytes removed.
    fn remove(&mut self, tgid: u32, start: u64, end: u64) -> u64 {
        let Some(map) = self.regions.get_mut(&tgid) else {
            return 0;
        };
        let first = map
            .range(..start)
            .next_back()
            .filter(|(_, r)| r.end > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        let hit: Vec<u64> = map.range(first..end).map(|(s, _)| *s).collect();
        let mut removed = 0;
        for s in hit {
            let r = map.remove(&s).expect("key just listed");
            if s < start {
                map.insert(s, Region { end: start, ..r });
            }
            if r.end > end {
                map.insert(end, r);
            }
            if r.counts {
                removed += r.end.min(end) - s.max(start);
            }
        }
        removed
    }

    /// Bytes still mapped, by stack.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out: HashMap<StackKey, Cell> = HashMap::new();
        for map in self.regions.values() {
            for (s, r) in map.iter().filter(|(_, r)| r.counts) {
                let c = out.entry(r.key).or_default();
                c.bytes += r.end - s;
                c.objects += 1;
            }
        }
        out.retain(|_, c| c.bytes > 0);
        out
    }
}

/// All lenses of one recording. Only the requested ones receive events.
#[derive(Default)]
pub struct Aggregator {
    pub alloc: Option<AllocAgg>,
    pub mmap: Option<MmapAgg>,
    pub events: u64,
}

impl Aggregator {
    pub fn apply(&mut self, d: &Decoded) {
        self.events += 1;
        let key = (d.ev.tgid, d.ev.stack_id);
        match d.kind {
            EventKind::Alloc => {
                if let Some(a) = self.alloc.as_mut() {
                    a.add(key, d.ev.size);
                }
            }
            EventKind::Mmap => {
                if let Some(m) = self.mmap.as_mut() {
                    m.map(key, d.ev.addr, d.ev.size, d.ev.aux & 0xffff_ffff);
                }
            }
            EventKind::Munmap => {
                if let Some(m) = self.mmap.as_mut() {
                    m.unmap(d.ev.tgid, d.ev.addr, d.ev.size);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u64 = 3;

    #[test]
    fn alloc_sums_per_stack() {
        let mut a = AllocAgg::default();
        a.add((1, 5), 64);
        a.add((1, 5), 64);
        a.add((1, 6), 1000);
        assert_eq!(
            a.by_stack[&(1, 5)],
            Cell {
                bytes: 128,
                objects: 2
            }
        );
        assert_eq!(
            a.totals(),
            Cell {
                bytes: 1128,
                objects: 3
            }
        );
        assert_eq!(a.sizes.len(), 3);
        assert!(a.sizes.value_at_quantile(0.99) >= 999);
    }

    #[test]
    fn mmap_then_partial_unmap() {
        let mut m = MmapAgg::default();
        m.map((1, 1), 0x10000, 4 * PAGE, RW);
        m.unmap(1, 0x11000, PAGE); // hole in the middle
        let s = m.by_stack();
        assert_eq!(s[&(1, 1)].bytes, 3 * PAGE);
        assert_eq!(m.unmapped_bytes, PAGE);
        m.unmap(1, 0, 0x100000);
        assert!(m.by_stack().is_empty());
        assert_eq!(m.unmapped_bytes, 4 * PAGE);
    }

    #[test]
    fn fixed_mapping_replaces_reservation() {
        let mut m = MmapAgg::default();
        m.map((1, 1), 0x100000, 64 * PAGE, PROT_NONE);
        assert!(m.by_stack().is_empty(), "reservations hold no memory");
        m.map((1, 2), 0x100000 + 8 * PAGE, 8 * PAGE, RW);
        let s = m.by_stack();
        assert_eq!(s.len(), 1);
        assert_eq!(s[&(1, 2)].bytes, 8 * PAGE);
    }

    #[test]
    fn unmapping_what_predates_the_window_is_harmless() {
        let mut m = MmapAgg::default();
        m.unmap(9, 0x5000, PAGE);
        m.map((9, 3), 0x9000, 1, RW); // rounded up to a page
        assert_eq!(m.by_stack()[&(9, 3)].bytes, PAGE);
        assert_eq!(m.unmapped_bytes, 0);
    }

    #[test]
    fn processes_are_separate() {
        let mut m = MmapAgg::default();
        m.map((1, 1), 0x1000, PAGE, RW);
        m.map((2, 1), 0x1000, PAGE, RW);
        m.unmap(1, 0x1000, PAGE);
        let s = m.by_stack();
        assert_eq!(s.len(), 1);
        assert!(s.contains_key(&(2, 1)));
    }
}
