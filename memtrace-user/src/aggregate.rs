//! Per-lens aggregation of decoded events, keyed by (process, stack id).
//! Symbol names are attached later, once, per distinct stack.

use std::collections::{BTreeMap, HashMap};

use crate::decode::{Op, Resolved};
use hdrhistogram::Histogram;

/// A stack as the kernel recorded it: the process and its stack-map id
/// (negative ids are errors, kept so their bytes stay visible).
pub type StackKey = (u32, i32);

/// A histogram for values from 1 to 2^40 (bytes or nanoseconds) at three
/// significant digits. Fixed bounds: an auto-resizing one would clamp
/// `saturating_record` to its initial range.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid bounds")
}

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
            sizes: histogram(),
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

fn page_round(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

/// Non-overlapping address ranges, each carrying a value. Inserting over a
/// range replaces what was there; removing splits ranges at the edges.
/// Adjacent ranges with equal values are merged, so sequentially touched
/// memory costs one entry, not one per page.
#[derive(Clone, Debug, Default)]
pub struct RangeMap<V> {
    map: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy + PartialEq> RangeMap<V> {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value at `addr`, if a range covers it.
    pub fn get(&self, addr: u64) -> Option<V> {
        self.map
            .range(..=addr)
            .next_back()
            .filter(|(_, (end, _))| *end > addr)
            .map(|(_, (_, v))| *v)
    }

    /// Whether any range intersects `[start, end)`.
    pub fn any_in(&self, start: u64, end: u64) -> bool {
        self.get(start).is_some() || self.map.range(start..end).next().is_some()
    }

    pub fn insert(&mut self, start: u64, end: u64, v: V) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &(pe, pv))) = self.map.range(..start).next_back() {
            if pe == start && pv == v {
                self.map.remove(&ps);
                s = ps;
            }
        }
        if let Some(&(ne, nv)) = self.map.get(&end) {
            if nv == v {
                self.map.remove(&end);
                e = ne;
            }
        }
        self.map.insert(s, (e, v));
    }

    /// Removes `[start, end)`; returns the removed pieces.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<(u64, u64, V)> {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(_, (e, _))| *e > start)
            .map_or(start, |(s, _)| *s);
        let hit: Vec<u64> = self.map.range(first..end).map(|(s, _)| *s).collect();
        let mut removed = Vec::with_capacity(hit.len());
        for s in hit {
            let (e, v) = self.map.remove(&s).expect("key just listed");
            if s < start {
                self.map.insert(s, (start, v));
            }
            if e > end {
                self.map.insert(end, (e, v));
            }
            removed.push((s.max(start), e.min(end), v));
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        self.map.iter().map(|(s, (e, v))| (*s, *e, *v))
    }
}

fn sum_by_key(
    ranges: impl Iterator<Item = (u64, u64, StackKey)>,
    out: &mut HashMap<StackKey, Cell>,
) {
    for (s, e, k) in ranges {
        let c = out.entry(k).or_default();
        c.bytes += e - s;
        c.objects += 1;
    }
}

/// `mmap`: address ranges mapped during the window and not unmapped since,
/// per process. PROT_NONE reservations are tracked (a later MAP_FIXED over
/// them replaces them) but hold no usable memory, so they count zero.
#[derive(Default)]
pub struct MmapAgg {
    regions: HashMap<u32, RangeMap<(StackKey, bool)>>,
    pub unmapped_bytes: u64,
}

impl MmapAgg {
    pub fn map(&mut self, key: StackKey, addr: u64, len: u64, prot: u64) {
        let len = page_round(len);
        self.regions
            .entry(key.0)
            .or_default()
            .insert(addr, addr + len, (key, prot != PROT_NONE));
    }

    pub fn unmap(&mut self, tgid: u32, addr: u64, len: u64) {
        let Some(m) = self.regions.get_mut(&tgid) else {
            return;
        };
        self.unmapped_bytes += m
            .remove(addr, addr + page_round(len))
            .iter()
            .filter(|(_, _, (_, counts))| *counts)
            .map(|(s, e, _)| e - s)
            .sum::<u64>();
    }

    /// Bytes still mapped, by stack.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out = HashMap::new();
        for m in self.regions.values() {
            sum_by_key(
                m.iter()
                    .filter(|(_, _, (_, counts))| *counts)
                    .map(|(s, e, (k, _))| (s, e, k)),
                &mut out,
            );
        }
        out
    }
}

const HUGE: u64 = 2 << 20;
/// Tracked resident ranges per process before new faults are counted
/// without per-page tracking (bounded memory: ~64 bytes per range).
pub const MAX_RESIDENT_RANGES: usize = 2_000_000;

mod madv {
    pub const FREE: u64 = 8;
    pub const REMOVE: u64 = 9;
    pub const DONTNEED: u64 = 4;
    pub const HUGEPAGE: u64 = 14;
    pub const NOHUGEPAGE: u64 = 15;
    pub const PAGEOUT: u64 = 21;
    pub const DONTNEED_LOCKED: u64 = 24;
}

/// Transparent huge page policy (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Thp {
    Always,
    #[default]
    Madvise,
    Never,
}

impl Thp {
    pub fn parse(text: &str) -> Self {
        let sel = text
            .split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or("");
        match sel {
            "always" => Thp::Always,
            "never" => Thp::Never,
            _ => Thp::Madvise,
        }
    }
}

/// Per-process state of the `rss` lens.
#[derive(Default)]
struct RssProc {
    /// Pages that became resident in the window and still are.
    resident: RangeMap<StackKey>,
    /// `MADV_HUGEPAGE` ranges.
    hugepage: RangeMap<()>,
    /// Anonymous writable mappings (for THP `always`), from /proc/PID/maps.
    anon_vmas: Vec<(u64, u64)>,
    brk: Option<u64>,
}

/// `rss`: bytes that became resident during the window (page faults, THP
/// faults as 2 MiB) and are still resident at its end (not released by
/// munmap, MADV_DONTNEED/REMOVE/PAGEOUT, mremap, brk shrink or a MAP_FIXED
/// mapping on top), by the stack that touched them first.
#[derive(Default)]
pub struct RssAgg {
    procs: HashMap<u32, RssProc>,
    pub thp: Thp,
    /// Resident bytes that were released again within the window.
    pub released_bytes: u64,
    /// Bytes covered by release requests (including pages that were resident
    /// before the window, which the lens cannot size).
    pub release_requested_bytes: u64,
    /// `MADV_FREE`d bytes: lazily freed, still resident until reclaimed.
    pub lazy_free_bytes: u64,
    /// Faults on pages already counted (e.g. write after read of the zero page).
    pub repeat_faults: u64,
    /// Faults counted after the range limit, without per-page tracking.
    pub untracked: HashMap<StackKey, Cell>,
}

impl RssAgg {
    pub fn new(thp: Thp) -> Self {
        Self {
            thp,
            ..Default::default()
        }
    }

    /// Refreshes the anonymous writable mappings of `pid` (THP `always`).
    pub fn set_anon_vmas(&mut self, pid: u32, vmas: Vec<(u64, u64)>) {
        self.procs.entry(pid).or_default().anon_vmas = vmas;
    }

    fn thp_block(thp: Thp, p: &RssProc, page: u64) -> Option<(u64, u64)> {
        let b = page & !(HUGE - 1);
        let fits = |(s, e): (u64, u64)| s <= b && b + HUGE <= e;
        let eligible = match thp {
            Thp::Never => false,
            Thp::Madvise => p.hugepage.iter().map(|(s, e, _)| (s, e)).any(fits),
            Thp::Always => p.anon_vmas.iter().copied().any(fits),
        };
        // A huge page is only allocated into an empty PMD.
        (eligible && !p.resident.any_in(b, b + HUGE)).then_some((b, b + HUGE))
    }

    pub fn fault(&mut self, key: StackKey, addr: u64) {
        let page = addr & !(PAGE - 1);
        let p = self.procs.entry(key.0).or_default();
        if p.resident.get(page).is_some() {
            self.repeat_faults += 1;
            return;
        }
        let (s, e) = Self::thp_block(self.thp, p, page).unwrap_or((page, page + PAGE));
        if p.resident.len() >= MAX_RESIDENT_RANGES {
            let c = self.untracked.entry(key).or_default();
            c.bytes += e - s;
            c.objects += 1;
            return;
        }
        p.resident.insert(s, e, key);
    }

    fn release(&mut self, pid: u32, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.release_requested_bytes += end - start;
        if let Some(p) = self.procs.get_mut(&pid) {
            self.released_bytes += p
                .resident
                .remove(start, end)
                .iter()
                .map(|(s, e, _)| e - s)
                .sum::<u64>();
        }
    }

    pub fn munmap(&mut self, pid: u32, addr: u64, len: u64) {
        self.release(pid, addr, addr + page_round(len));
    }

    /// A new mapping replaces whatever was resident underneath (MAP_FIXED).
    pub fn mmap(&mut self, pid: u32, addr: u64, len: u64) {
        let end = addr + page_round(len);
        if let Some(p) = self.procs.get_mut(&pid) {
            self.released_bytes += p
                .resident
                .remove(addr, end)
                .iter()
                .map(|(s, e, _)| e - s)
                .sum::<u64>();
            p.hugepage.remove(addr, end);
        }
    }

    pub fn madvise(&mut self, pid: u32, addr: u64, len: u64, advice: u64) {
        let end = addr + page_round(len);
        match advice {
            madv::DONTNEED | madv::REMOVE | madv::PAGEOUT | madv::DONTNEED_LOCKED => {
                self.release(pid, addr, end)
            }
            madv::FREE => self.lazy_free_bytes += end - addr,
            madv::HUGEPAGE => self
                .procs
                .entry(pid)
                .or_default()
                .hugepage
                .insert(addr, end, ()),
            madv::NOHUGEPAGE => {
                self.procs
                    .entry(pid)
                    .or_default()
                    .hugepage
                    .remove(addr, end);
            }
            _ => {}
        }
    }

    pub fn mremap(&mut self, pid: u32, old: u64, old_len: u64, new: u64, new_len: u64) {
        let (old_len, new_len) = (page_round(old_len), page_round(new_len));
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let pieces = p.resident.remove(old, old + old_len);
        let mut released = 0;
        for (s, e, k) in pieces {
            let (os, oe) = (s - old, e - old);
            let cut = new_len.clamp(os, oe);
            if os < cut {
                p.resident.insert(new + os, new + cut, k);
            }
            released += oe - cut;
        }
        self.released_bytes += released;
        self.release_requested_bytes += old_len.saturating_sub(new_len);
    }

    pub fn brk(&mut self, pid: u32, result: u64) {
        let prev = self.procs.entry(pid).or_default().brk.replace(result);
        if let Some(prev) = prev {
            if result < prev {
                self.release(pid, result, prev);
            }
        }
    }

    /// Bytes still resident, by the stack that first touched them.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out = self.untracked.clone();
        for p in self.procs.values() {
            sum_by_key(p.resident.iter(), &mut out);
        }
        out
    }
}

/// `goroutines`: live goroutines by creation stack (the `go` statement's,
/// with the start function as leaf). Created and exited counts per stack.
#[derive(Default)]
pub struct GoroutineAgg {
    live: HashMap<(u32, u64), StackKey>,
    pub created: HashMap<StackKey, u64>,
    pub exited: HashMap<StackKey, u64>,
    /// Exits of goroutines neither seen created nor listed at attach.
    pub unknown_exits: u64,
}

impl GoroutineAgg {
    pub fn create(&mut self, key: StackKey, g: u64) {
        self.live.insert((key.0, g), key);
        *self.created.entry(key).or_default() += 1;
    }

    /// A goroutine that existed before tracing began.
    pub fn existing(&mut self, key: StackKey, g: u64) {
        self.live.entry((key.0, g)).or_insert(key);
    }

    pub fn exit(&mut self, pid: u32, g: u64) {
        match self.live.remove(&(pid, g)) {
            Some(k) => *self.exited.entry(k).or_default() += 1,
            None => self.unknown_exits += 1,
        }
    }

    pub fn live_count(&self, pid: u32) -> usize {
        self.live.keys().filter(|(p, _)| *p == pid).count()
    }

    /// Live goroutines (`bytes` holds the count) by creation stack.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out: HashMap<StackKey, Cell> = HashMap::new();
        for k in self.live.values() {
            out.entry(*k).or_default().bytes += 1;
        }
        out
    }

    /// Live goroutine pointers of a process.
    pub fn live_of(&self, pid: u32) -> impl Iterator<Item = (u64, StackKey)> + '_ {
        self.live
            .iter()
            .filter(move |((p, _), _)| *p == pid)
            .map(|((_, g), k)| (*g, *k))
    }
}

/// One GC cycle as seen at mark termination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GcCycle {
    pub pid: u32,
    /// Monotonic nanoseconds (as `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub heap_live: u64,
    pub heap_goal: u64,
}

/// The GC view: cycles and stop-the-world pauses.
pub struct GcAgg {
    pub cycles: Vec<GcCycle>,
    /// Stop-the-world pause durations, nanoseconds.
    pub pauses: Histogram<u64>,
    stopped: HashMap<u32, u64>,
}

impl Default for GcAgg {
    fn default() -> Self {
        Self {
            cycles: Vec::new(),
            pauses: histogram(),
            stopped: HashMap::new(),
        }
    }
}

impl GcAgg {
    pub fn stw(&mut self, pid: u32, stop: bool, ts: u64) {
        if stop {
            self.stopped.insert(pid, ts);
        } else if let Some(t0) = self.stopped.remove(&pid) {
            self.pauses.saturating_record(ts.saturating_sub(t0).max(1));
        }
    }
}

/// All lenses of one recording. Only the requested ones receive events.
#[derive(Default)]
pub struct Aggregator {
    pub alloc: Option<AllocAgg>,
    pub mmap: Option<MmapAgg>,
    pub rss: Option<RssAgg>,
    pub goroutines: Option<GoroutineAgg>,
    pub gc: GcAgg,
    pub events: u64,
}

impl Aggregator {
    pub fn apply(&mut self, r: &Resolved) {
        self.events += 1;
        let (key, pid) = (r.key, r.key.0);
        match r.op {
            Op::Alloc { size } => {
                if let Some(a) = self.alloc.as_mut() {
                    a.add(key, size);
                }
            }
            Op::Mmap { addr, len, prot } => {
                if let Some(m) = self.mmap.as_mut() {
                    m.map(key, addr, len, prot);
                }
                if let Some(rss) = self.rss.as_mut() {
                    rss.mmap(pid, addr, len);
                }
            }
            Op::Munmap { addr, len } => {
                if let Some(m) = self.mmap.as_mut() {
                    m.unmap(pid, addr, len);
                }
                if let Some(rss) = self.rss.as_mut() {
                    rss.munmap(pid, addr, len);
                }
            }
            Op::Fault { addr, len } => {
                if let Some(rss) = self.rss.as_mut() {
                    let mut page = addr;
                    while page < addr + len.max(1) {
                        rss.fault(key, page);
                        page += PAGE;
                    }
                }
            }
            Op::Madvise { addr, len, advice } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.madvise(pid, addr, len, advice);
                }
            }
            Op::Mremap {
                old,
                old_len,
                new,
                new_len,
            } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.mremap(pid, old, old_len, new, new_len);
                }
            }
            Op::Brk { result } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.brk(pid, result);
                }
            }
            Op::GoCreate { g, .. } => {
                if let Some(gs) = self.goroutines.as_mut() {
                    gs.create(key, g);
                }
            }
            Op::GoExit { g } => {
                if let Some(gs) = self.goroutines.as_mut() {
                    gs.exit(pid, g);
                }
            }
            Op::GcCycle {
                heap_live,
                heap_goal,
                ts,
            } => self.gc.cycles.push(GcCycle {
                pid,
                ts_ns: ts,
                heap_live,
                heap_goal,
            }),
            Op::Stw { stop, ts } => self.gc.stw(pid, stop, ts),
            // Process lifecycle is the agent's business, not a lens's.
            Op::ProcExec | Op::ProcExit => {}
        }
    }

    /// Drops everything kept for `pid` (the agent, when it exits).
    pub fn forget(&mut self, pid: u32) {
        if let Some(rss) = self.rss.as_mut() {
            rss.procs.remove(&pid);
            rss.untracked.retain(|k, _| k.0 != pid);
        }
        if let Some(gs) = self.goroutines.as_mut() {
            gs.live.retain(|k, _| k.0 != pid);
            gs.created.retain(|k, _| k.0 != pid);
            gs.exited.retain(|k, _| k.0 != pid);
        }
        self.gc.cycles.retain(|c| c.pid != pid);
        self.gc.stopped.remove(&pid);
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
        a.add((1, 7), 64 << 20);
        assert!(a.sizes.max() >= 64 << 20, "large sizes are not clamped");
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
    fn range_map_merges_and_splits() {
        let mut m: RangeMap<u8> = RangeMap::default();
        for i in 0..100 {
            m.insert(0x1000 * i, 0x1000 * (i + 1), 7);
        }
        assert_eq!(m.len(), 1, "adjacent equal ranges merge");
        m.insert(0x5000, 0x6000, 8);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(0x5800), Some(8));
        assert_eq!(m.get(0x4fff), Some(7));
        assert_eq!(m.get(100 * 0x1000), None);
        let removed = m.remove(0x4800, 0x5800);
        assert_eq!(removed.iter().map(|(s, e, _)| e - s).sum::<u64>(), 0x1000);
        assert!(m.any_in(0x4000, 0x4900) && !m.any_in(0x4800, 0x5800));
    }

    #[test]
    fn rss_counts_first_touch_once_and_releases() {
        let mut r = RssAgg::new(Thp::Madvise);
        for p in 0..10 {
            r.fault((1, 5), 0x10000 + p * PAGE + 12);
        }
        r.fault((1, 6), 0x10000); // write after read: same page
        assert_eq!(r.repeat_faults, 1);
        assert_eq!(r.by_stack()[&(1, 5)].bytes, 10 * PAGE);
        r.madvise(1, 0x10000, 2 * PAGE, madv::DONTNEED);
        r.madvise(1, 0x12000, PAGE, madv::FREE); // lazy: still resident
        assert_eq!(r.by_stack()[&(1, 5)].bytes, 8 * PAGE);
        assert_eq!(r.released_bytes, 2 * PAGE);
        assert_eq!(r.lazy_free_bytes, PAGE);
        r.fault((1, 6), 0x10000); // re-faulted after release: counts again
        assert_eq!(r.by_stack()[&(1, 6)].bytes, PAGE);
        r.munmap(1, 0, 1 << 30);
        assert!(r.by_stack().is_empty());
        assert_eq!(r.released_bytes, 11 * PAGE);
    }

    #[test]
    fn rss_thp_faults_count_two_mib() {
        let mut r = RssAgg::new(Thp::Madvise);
        let base = 0x4000_0000;
        r.madvise(1, base, 2 * HUGE, madv::HUGEPAGE);
        r.fault((1, 1), base + 5 * PAGE);
        assert_eq!(r.by_stack()[&(1, 1)].bytes, HUGE);
        r.fault((1, 1), base + HUGE + 7);
        assert_eq!(r.by_stack()[&(1, 1)].bytes, 2 * HUGE);
        // Outside the madvised range: 4 KiB pages.
        r.fault((1, 2), base + 2 * HUGE);
        assert_eq!(r.by_stack()[&(1, 2)].bytes, PAGE);
        // THP "always": any anonymous mapping that holds the whole block.
        let mut a = RssAgg::new(Thp::Always);
        a.set_anon_vmas(1, vec![(base, base + HUGE + PAGE)]);
        a.fault((1, 1), base + HUGE); // block does not fit
        a.fault((1, 1), base + 3);
        assert_eq!(a.by_stack()[&(1, 1)].bytes, PAGE + HUGE);
        assert_eq!(Thp::parse("always [madvise] never"), Thp::Madvise);
        assert_eq!(Thp::parse("[always] madvise never"), Thp::Always);
    }

    #[test]
    fn rss_mremap_moves_and_brk_shrinks() {
        let mut r = RssAgg::new(Thp::Never);
        for p in 0..4 {
            r.fault((1, 1), 0x100000 + p * PAGE);
        }
        // Move and shrink to 3 pages: one page released, three moved.
        r.mremap(1, 0x100000, 4 * PAGE, 0x900000, 3 * PAGE);
        let moved: Vec<_> = r.procs[&1].resident.iter().collect();
        assert_eq!(moved, vec![(0x900000, 0x900000 + 3 * PAGE, (1, 1))]);
        assert_eq!(r.released_bytes, PAGE);
        r.brk(1, 0x600000);
        for p in 0..8 {
            r.fault((1, 2), 0x5f8000 + p * PAGE);
        }
        r.brk(1, 0x5fc000); // shrink by 4 pages
        assert_eq!(r.by_stack()[&(1, 2)].bytes, 4 * PAGE);
    }

    #[test]
    fn rss_mmap_fixed_drops_old_pages() {
        let mut r = RssAgg::new(Thp::Never);
        r.fault((1, 1), 0x7000);
        r.mmap(1, 0x7000, PAGE);
        assert!(r.by_stack().is_empty());
    }

    #[test]
    fn goroutines_live_created_exited() {
        let mut g = GoroutineAgg::default();
        g.existing((1, 9), 0xa0);
        for i in 0..5 {
            g.create((1, 2), 0x100 + i);
        }
        g.create((1, 3), 0x200);
        g.exit(1, 0x200);
        g.exit(1, 0x100);
        g.exit(1, 0xa0);
        g.exit(1, 0xdead);
        let live = g.by_stack();
        assert_eq!(live[&(1, 2)].bytes, 4);
        assert!(!live.contains_key(&(1, 3)) && !live.contains_key(&(1, 9)));
        assert_eq!(g.created[&(1, 2)], 5);
        assert_eq!(g.exited[&(1, 3)], 1);
        assert_eq!(g.unknown_exits, 1);
        assert_eq!(g.live_count(1), 4);
    }

    #[test]
    fn gc_pauses_pair_per_process() {
        let mut g = GcAgg::default();
        g.stw(1, true, 1_000);
        g.stw(2, true, 1_500);
        g.stw(1, false, 51_000);
        g.stw(2, false, 2_500);
        g.stw(1, false, 9_000_000); // restart without a stop: ignored
        assert_eq!(g.pauses.len(), 2);
        assert!(g.pauses.max() >= 49_990 && g.pauses.min() <= 1_001);
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
