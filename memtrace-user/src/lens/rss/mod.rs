//! The `rss` lens: which stacks made resident memory grow. Page faults say
//! when pages become resident (and by which stack); the memory syscalls say
//! when they stop being so. Its aggregator keeps, per process, the pages
//! that became resident in the window and still are.

use crate::kernel::decode::Run;
use std::collections::{HashMap, VecDeque};

use memtrace_common::FaultRun;

use crate::kernel::Tracepoint;
use crate::lens::cell::{page_round, sum_by_key, Cell, PAGE};
use crate::model::rangemap::RangeMap;
use crate::model::stack::StackKey;

/// Faults (user and kernel mode) and every syscall that maps or releases.
pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint::new("fault_user", "exceptions", "page_fault_user"),
    Tracepoint::new("fault_kernel", "exceptions", "page_fault_kernel"),
    Tracepoint::new("mmap_enter", "syscalls", "sys_enter_mmap"),
    Tracepoint::new("mmap_exit", "syscalls", "sys_exit_mmap"),
    Tracepoint::new("munmap_enter", "syscalls", "sys_enter_munmap"),
    Tracepoint::new("madvise_enter", "syscalls", "sys_enter_madvise"),
    Tracepoint::new("mremap_enter", "syscalls", "sys_enter_mremap"),
    Tracepoint::new("mremap_exit", "syscalls", "sys_exit_mremap"),
    Tracepoint::new("brk_enter", "syscalls", "sys_enter_brk"),
    Tracepoint::new("brk_exit", "syscalls", "sys_exit_brk"),
    Tracepoint::new("fault_runs_exit", "sched", "sched_process_exit"),
    Tracepoint::new("fault_runs_exec", "sched", "sched_process_exec"),
];

/// How long releases are remembered to order runs of merged faults against
/// them (runs in progress are read every second, so their pages are never
/// this late), and how many at most per process.
const RELEASE_LOG_NS: u64 = 10_000_000_000;
const RELEASE_LOG_MAX: usize = 65_536;

const HUGE: u64 = 2 << 20;
/// Tracked resident ranges per process before new faults are counted
/// without per-page tracking (bounded memory: ~64 bytes per range).
pub const MAX_RESIDENT_RANGES: usize = 2_000_000;

mod madv {
    pub const FREE: u32 = 8;
    pub const REMOVE: u32 = 9;
    pub const DONTNEED: u32 = 4;
    pub const HUGEPAGE: u32 = 14;
    pub const NOHUGEPAGE: u32 = 15;
    pub const PAGEOUT: u32 = 21;
    pub const DONTNEED_LOCKED: u32 = 24;
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
pub(crate) struct RssProc {
    /// Pages that became resident in the window and still are.
    resident: RangeMap<StackKey>,
    /// Pages that were resident when the window began and still are (from
    /// `/proc/PID/pagemap`; empty for a program traced from exec).
    before: RangeMap<()>,
    /// Pages that became resident in an earlier window and still are, by
    /// the stack that touched them first: with `resident`, the whole
    /// trace's resident memory (what an OOM report needs).
    life: RangeMap<StackKey>,
    /// `MADV_HUGEPAGE` ranges.
    hugepage: RangeMap<()>,
    /// Anonymous writable mappings (for THP `always`), from /proc/PID/maps.
    anon_vmas: Vec<(u64, u64)>,
    brk: Option<u64>,
    /// Pages already counted of each run of merged faults, by (thread,
    /// run start): a run is read while in progress, and sent when it ends.
    runs_counted: HashMap<(u32, u64), u64>,
    /// Recent releases (time, start, end), oldest first.
    releases: VecDeque<(u64, u64, u64)>,
}

impl RssProc {
    fn log_release(&mut self, now: u64, start: u64, end: u64) {
        while self
            .releases
            .front()
            .is_some_and(|&(t, _, _)| t.saturating_add(RELEASE_LOG_NS) < now)
            || self.releases.len() >= RELEASE_LOG_MAX
        {
            self.releases.pop_front();
        }
        self.releases.push_back((now, start, end));
    }
}

/// `rss`: bytes that became resident during the window (page faults, THP
/// faults as 2 MiB) and are still resident at its end (not released by
/// munmap, MADV_DONTNEED/REMOVE/PAGEOUT, mremap, brk shrink or a MAP_FIXED
/// mapping on top), by the stack that touched them first. Net growth also
/// subtracts the pages that were resident before the window and released
/// during it, by the stack that released them.
#[derive(Default)]
pub struct RssAgg {
    pub(crate) procs: HashMap<u32, RssProc>,
    pub thp: Thp,
    /// Resident bytes that were released again within the window.
    pub released_bytes: u64,
    /// Bytes covered by release requests (resident or not).
    pub release_requested_bytes: u64,
    /// Bytes resident before the window and released during it, by the
    /// releasing stack (the caller of munmap, madvise, ...).
    pub released_before: HashMap<StackKey, Cell>,
    /// `MADV_FREE`d bytes: lazily freed, still resident until reclaimed.
    pub lazy_free_bytes: u64,
    /// Faults on pages already counted (e.g. write after read of the zero page).
    pub repeat_faults: u64,
    /// Faults counted after the range limit, without per-page tracking.
    pub untracked: HashMap<StackKey, Cell>,
    /// The same, of earlier windows, and pages of earlier windows past the
    /// limit of the whole-trace view.
    pub untracked_life: HashMap<StackKey, Cell>,
    /// The time of the event being applied (monotonic ns; 0: unknown).
    pub(crate) now_ns: u64,
    /// Pages of merged runs that a later release had already taken back
    /// when the run arrived.
    pub run_pages_released: u64,
}

fn len_of<V>(pieces: &[(u64, u64, V)]) -> u64 {
    pieces.iter().map(|(s, e, _)| e - s).sum()
}

/// The pages of `run` after its first `done`, as one address range
/// `[lo, hi)` and whether they come downwards: for a run of adjacent pages
/// (a stride of one page either way). None for other strides, or a range
/// that would wrap.
fn contiguous(run: &Run, done: u64) -> Option<(u64, u64, bool)> {
    let n = run.count.checked_sub(done).filter(|&n| n > 0)?;
    let skip = done.checked_add(1)?.checked_mul(PAGE)?;
    let span = n.checked_mul(PAGE)?;
    if run.stride == PAGE {
        let lo = run.first.checked_add(skip)?;
        Some((lo, lo.checked_add(span)?, false))
    } else if run.stride == PAGE.wrapping_neg() {
        let hi = run.first.checked_sub(skip)?.checked_add(PAGE)?;
        Some((hi.checked_sub(span)?, hi, true))
    } else {
        None
    }
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

    /// The pages of `pid` resident when the window began: `(start, end)`
    /// page ranges.
    pub fn set_resident_before(&mut self, pid: u32, ranges: &[(u64, u64)]) {
        let p = self.procs.entry(pid).or_default();
        for &(s, e) in ranges {
            p.before.insert(s, e, ());
        }
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
        (eligible && !p.resident.any_in(b, b + HUGE) && !p.before.any_in(b, b + HUGE))
            .then_some((b, b + HUGE))
    }

    pub fn fault(&mut self, key: StackKey, addr: u64) {
        let page = addr & !(PAGE - 1);
        let p = self.procs.entry(key.0).or_default();
        if p.resident.get(page).is_some() {
            self.repeat_faults += 1;
            return;
        }
        // A fault on a page the snapshot saw (it came in between the probes
        // and the snapshot, or was the zero page): it became resident now.
        if !p.before.is_empty() {
            p.before.remove(page, page + PAGE);
        }
        if !p.life.is_empty() {
            p.life.remove(page, page + PAGE);
        }
        let (s, e) = Self::thp_block(self.thp, p, page).unwrap_or((page, page + PAGE));
        if p.resident.len() >= MAX_RESIDENT_RANGES {
            let c = self.untracked.entry(key).or_default();
            c.bytes += e - s;
            c.objects += 1;
            return;
        }
        // Nothing resident there: the page was looked up, and a huge page
        // is only counted for a block with nothing resident.
        p.resident.insert_free(s, e, key);
    }

    /// The pages of a run of merged faults not counted yet, in order. The
    /// kernel ends a run at the first fault after any release, so its
    /// pages all faulted before a release sent after the run began: those
    /// a later release covers are released already.
    pub fn fault_run(&mut self, key: StackKey, run: Run) {
        let Some(p) = self.procs.get_mut(&key.0) else {
            return; // its first page was never seen: the process is gone
        };
        let id = (run.tid, run.start_ns);
        let done = p.runs_counted.get(&id).copied().unwrap_or(0);
        if run.ended {
            p.runs_counted.remove(&id);
        } else {
            p.runs_counted.insert(id, done.max(run.count));
        }
        if run.count <= done {
            return;
        }
        let later: Vec<(u64, u64)> = p
            .releases
            .iter()
            .filter(|&&(t, _, _)| t > run.start_ns)
            .map(|&(_, s, e)| (s, e))
            .collect();
        if let Some((lo, hi, descending)) = contiguous(&run, done) {
            let room = p.resident.len() as u64 + (hi - lo) / PAGE < MAX_RESIDENT_RANGES as u64;
            if room && later.iter().all(|&(s, e)| e <= lo || hi <= s) {
                self.fault_range(key, lo, hi, descending);
                return;
            }
        }
        for page in FaultRun::pages(run.first, run.stride, run.count).skip(done as usize) {
            if later.iter().any(|&(s, e)| s <= page && page < e) {
                self.run_pages_released += 1;
                self.released_bytes += PAGE;
                continue;
            }
            self.fault(key, page);
        }
    }

    /// [`RssAgg::fault`] on every page of `[lo, hi)`, upwards or (when
    /// `descending`) downwards, a 2 MiB block at a time: a block's first
    /// page not resident yet goes through `fault` (it may bring in a huge
    /// page); after it the block holds something, so no later page of it
    /// can, and its free parts go in as whole ranges: a few tree
    /// operations per block, where page by page took a few per page. The
    /// caller makes sure no page of the range is released already and that
    /// the range limit cannot be reached on the way.
    fn fault_range(&mut self, key: StackKey, lo: u64, hi: u64, descending: bool) {
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        let mut at = lo;
        while at < hi {
            let end = ((at & !(HUGE - 1)) + HUGE).min(hi);
            blocks.push((at, end));
            at = end;
        }
        if descending {
            blocks.reverse();
        }
        for (s, e) in blocks {
            let Some(p) = self.procs.get(&key.0) else {
                return;
            };
            let free = p.resident.gaps(s, e);
            let first = match (descending, free.first(), free.last()) {
                (false, Some(&(g, _)), _) => g,
                (true, _, Some(&(_, g))) => g - PAGE,
                _ => {
                    self.repeat_faults += (e - s) / PAGE;
                    continue;
                }
            };
            self.fault(key, first);
            let (rs, re) = if descending {
                (s, first)
            } else {
                (first + PAGE, e)
            };
            let Some(p) = self.procs.get_mut(&key.0) else {
                return;
            };
            let rest = p.resident.gaps(rs, re);
            let newly: u64 = rest.iter().map(|(s, e)| e - s).sum();
            self.repeat_faults += (e - s) / PAGE - 1 - newly / PAGE;
            for (gs, ge) in rest {
                if !p.before.is_empty() {
                    p.before.remove(gs, ge);
                }
                if !p.life.is_empty() {
                    p.life.remove(gs, ge);
                }
                p.resident.insert_free(gs, ge, key);
            }
        }
    }

    /// `[start, end)` stops being resident, released by `key`'s stack.
    fn release(&mut self, key: StackKey, start: u64, end: u64) {
        if end <= start {
            return;
        }
        self.release_requested_bytes += end - start;
        let now = self.now_ns;
        let Some(p) = self.procs.get_mut(&key.0) else {
            return;
        };
        p.log_release(now, start, end);
        self.released_bytes += len_of(&p.resident.remove(start, end));
        if !p.life.is_empty() {
            p.life.remove(start, end);
        }
        let before = len_of(&p.before.remove(start, end));
        if before > 0 {
            let c = self.released_before.entry(key).or_default();
            c.bytes += before;
            c.objects += 1;
        }
    }

    pub fn munmap(&mut self, key: StackKey, addr: u64, len: u64) {
        self.release(key, addr, addr + page_round(len));
    }

    /// A new mapping replaces whatever was resident underneath (MAP_FIXED).
    pub fn mmap(&mut self, key: StackKey, addr: u64, len: u64) {
        let end = addr + page_round(len);
        let now = self.now_ns;
        if let Some(p) = self.procs.get_mut(&key.0) {
            p.log_release(now, addr, end);
            p.hugepage.remove(addr, end);
            if p.resident.any_in(addr, end) || p.before.any_in(addr, end) {
                self.release(key, addr, end);
            }
        }
    }

    pub fn madvise(&mut self, key: StackKey, addr: u64, len: u64, advice: u32) {
        let end = addr + page_round(len);
        match advice {
            madv::DONTNEED | madv::REMOVE | madv::PAGEOUT | madv::DONTNEED_LOCKED => {
                self.release(key, addr, end)
            }
            madv::FREE => self.lazy_free_bytes += end - addr,
            madv::HUGEPAGE => self
                .procs
                .entry(key.0)
                .or_default()
                .hugepage
                .insert(addr, end, ()),
            madv::NOHUGEPAGE => {
                self.procs
                    .entry(key.0)
                    .or_default()
                    .hugepage
                    .remove(addr, end);
            }
            _ => {}
        }
    }

    pub fn mremap(&mut self, key: StackKey, old: u64, old_len: u64, new: u64, new_len: u64) {
        let (old_len, new_len) = (page_round(old_len), page_round(new_len));
        let now = self.now_ns;
        let Some(p) = self.procs.get_mut(&key.0) else {
            return;
        };
        p.log_release(now, old, old + old_len);
        // Pages move with the mapping; what falls past its new end is gone.
        let mut released = 0;
        for (s, e, k) in p.resident.remove(old, old + old_len) {
            let (os, oe) = (s - old, e - old);
            let cut = new_len.clamp(os, oe);
            if os < cut {
                p.resident.insert(new + os, new + cut, k);
            }
            released += oe - cut;
        }
        let mut released_before = 0;
        for (s, e, ()) in p.before.remove(old, old + old_len) {
            let (os, oe) = (s - old, e - old);
            let cut = new_len.clamp(os, oe);
            if os < cut {
                p.before.insert(new + os, new + cut, ());
            }
            released_before += oe - cut;
        }
        self.released_bytes += released;
        self.release_requested_bytes += old_len.saturating_sub(new_len);
        if released_before > 0 {
            let c = self.released_before.entry(key).or_default();
            c.bytes += released_before;
            c.objects += 1;
        }
    }

    pub fn brk(&mut self, key: StackKey, result: u64) {
        let prev = self.procs.entry(key.0).or_default().brk.replace(result);
        if let Some(prev) = prev {
            if result < prev {
                self.release(key, result, prev);
            }
        }
    }

    /// Bytes resident now that became resident at any time while traced,
    /// by the stack that first touched them: every window's, not only
    /// this one's.
    pub fn life_by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out = self.by_stack();
        for (k, c) in &self.untracked_life {
            let to = out.entry(*k).or_default();
            to.bytes += c.bytes;
            to.objects += c.objects;
        }
        for p in self.procs.values() {
            sum_by_key(p.life.iter(), &mut out);
        }
        out
    }

    /// Bytes of `pid` resident since before tracing began (the snapshot at
    /// attach, less what was released or faulted again since).
    pub fn resident_before_tracing(&self, pid: u32) -> u64 {
        let Some(p) = self.procs.get(&pid) else {
            return 0;
        };
        p.before
            .iter()
            .map(|(s, e, _)| p.life.gaps(s, e).iter().map(|(a, b)| b - a).sum::<u64>())
            .sum()
    }

    /// Bytes still resident, by the stack that first touched them.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out = self.untracked.clone();
        for p in self.procs.values() {
            sum_by_key(p.resident.iter(), &mut out);
        }
        out
    }

    /// Bytes that grew and stayed, less bytes resident before the window
    /// and released in it, for the processes `pids`.
    pub fn net_growth(&self, pids: &[u32]) -> (u64, u64) {
        let grew = self
            .by_stack()
            .iter()
            .filter(|(k, _)| pids.contains(&k.0))
            .map(|(_, c)| c.bytes)
            .sum();
        let released = self
            .released_before
            .iter()
            .filter(|(k, _)| pids.contains(&k.0))
            .map(|(_, c)| c.bytes)
            .sum();
        (grew, released)
    }

    /// A new window: what is resident now is "before" for it, and stays
    /// attributed to its stacks in the whole trace's view.
    pub fn next_window(&mut self) -> Self {
        let mut next = RssAgg::new(self.thp);
        next.untracked_life = std::mem::take(&mut self.untracked_life);
        for (k, c) in self.untracked.drain() {
            let to = next.untracked_life.entry(k).or_default();
            to.bytes += c.bytes;
            to.objects += c.objects;
        }
        for (pid, p) in self.procs.drain() {
            let mut before = p.before;
            let mut life = p.life;
            for (s, e, k) in p.resident.iter() {
                before.insert(s, e, ());
                if life.len() < MAX_RESIDENT_RANGES {
                    life.insert(s, e, k);
                } else {
                    let c = next.untracked_life.entry(k).or_default();
                    c.bytes += e - s;
                    c.objects += 1;
                }
            }
            next.procs.insert(
                pid,
                RssProc {
                    before,
                    life,
                    hugepage: p.hugepage,
                    anon_vmas: p.anon_vmas,
                    brk: p.brk,
                    runs_counted: p.runs_counted,
                    releases: p.releases,
                    ..Default::default()
                },
            );
        }
        next
    }
}

#[cfg(test)]
mod tests;

mod instance;
