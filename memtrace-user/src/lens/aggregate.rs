//! Resolved events into per-lens aggregates, keyed by (process, stack).
//! Symbol names are attached later, once, per distinct stack. The lenses'
//! own aggregators live in `lens::*`; this module routes events to them.

use std::collections::HashMap;

use super::cell::{Cell, PAGE};
use crate::kernel::decode::{Op, Resolved};
use crate::lens::alloc_exact::AllocExactAgg;
use crate::lens::gc::{GcAgg, GcCycle};
use crate::lens::goroutines::GoroutineAgg;
use crate::lens::mmap::MmapAgg;
use crate::lens::rss::{RssAgg, Thp};
use crate::model::lens::Lens;
use crate::model::stack::StackKey;

/// Every event-fed lens of one session; only the requested ones receive
/// events. The GC view is always on.
#[derive(Default)]
pub struct Aggregator {
    pub alloc_exact: Option<AllocExactAgg>,
    pub mmap: Option<MmapAgg>,
    pub rss: Option<RssAgg>,
    pub goroutines: Option<GoroutineAgg>,
    pub gc: GcAgg,
    /// Events applied.
    pub events: u64,
    /// `cells(Rss)` gives the whole trace's resident memory instead of the
    /// window's growth (set for an OOM report or a limit snapshot).
    pub rss_whole_trace: bool,
}

impl Aggregator {
    pub fn new(lenses: &[Lens], thp: Thp) -> Self {
        let has = |l| lenses.contains(&l);
        Self {
            alloc_exact: has(Lens::AllocExact).then(AllocExactAgg::default),
            mmap: has(Lens::Mmap).then(MmapAgg::default),
            rss: has(Lens::Rss).then(|| RssAgg::new(thp)),
            goroutines: has(Lens::Goroutines).then(GoroutineAgg::default),
            gc: GcAgg::default(),
            events: 0,
            rss_whole_trace: false,
        }
    }

    pub fn apply(&mut self, r: &Resolved) {
        self.events += 1;
        let (key, pid) = (r.key, r.key.0);
        if let Some(rss) = self.rss.as_mut() {
            rss.now_ns = r.ts;
        }
        match r.op {
            Op::Alloc { size, class } => {
                if let Some(a) = self.alloc_exact.as_mut() {
                    a.add(key, size, class);
                }
            }
            Op::Mmap { addr, len, prot } => {
                if let Some(m) = self.mmap.as_mut() {
                    m.map(key, addr, len, prot);
                }
                if let Some(rss) = self.rss.as_mut() {
                    rss.mmap(key, addr, len);
                }
            }
            Op::Munmap { addr, len } => {
                if let Some(m) = self.mmap.as_mut() {
                    m.unmap(pid, addr, len);
                }
                if let Some(rss) = self.rss.as_mut() {
                    rss.munmap(key, addr, len);
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
            Op::FaultRun(run) => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.fault_run(key, run);
                }
            }
            Op::Madvise { addr, len, advice } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.madvise(key, addr, len, advice);
                }
            }
            Op::Mremap {
                old,
                old_len,
                new,
                new_len,
            } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.mremap(key, old, old_len, new, new_len);
                }
            }
            Op::Brk { result } => {
                if let Some(rss) = self.rss.as_mut() {
                    rss.brk(key, result);
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
                heap_marked,
                ts,
            } => self.gc.cycles.push(GcCycle {
                pid,
                ts_ns: ts,
                heap_live,
                heap_goal,
                heap_marked,
            }),
            Op::Stw { stop, ts } => self.gc.stw(pid, stop, ts),
            // Process lifecycle and holds are the engine's business.
            Op::ProcExec | Op::ProcExit | Op::OomVictim { .. } | Op::Hold { .. } => {}
        }
    }

    /// The cells of an event-fed lens (`None` for the sampled ones, which
    /// read the runtime's profile instead).
    pub fn cells(&self, lens: Lens) -> Option<HashMap<StackKey, Cell>> {
        match lens {
            Lens::AllocExact => self.alloc_exact.as_ref().map(|a| a.by_stack.clone()),
            Lens::Mmap => self.mmap.as_ref().map(MmapAgg::by_stack),
            Lens::Rss if self.rss_whole_trace => self.rss.as_ref().map(RssAgg::life_by_stack),
            Lens::Rss => self.rss.as_ref().map(RssAgg::by_stack),
            Lens::Goroutines => self.goroutines.as_ref().map(GoroutineAgg::by_stack),
            Lens::Alloc | Lens::Heap => None,
        }
    }

    /// Drops everything kept for `pid` (it exited, or execs another program).
    pub fn forget(&mut self, pid: u32) {
        if let Some(rss) = self.rss.as_mut() {
            rss.procs.remove(&pid);
            rss.untracked.retain(|k, _| k.0 != pid);
            rss.untracked_life.retain(|k, _| k.0 != pid);
            rss.released_before.retain(|k, _| k.0 != pid);
        }
        if let Some(m) = self.mmap.as_mut() {
            m.forget(pid);
        }
        if let Some(a) = self.alloc_exact.as_mut() {
            a.by_stack.retain(|k, _| k.0 != pid);
        }
        if let Some(gs) = self.goroutines.as_mut() {
            gs.live.retain(|k, _| k.0 != pid);
            gs.created.retain(|k, _| k.0 != pid);
            gs.exited.retain(|k, _| k.0 != pid);
        }
        self.gc.cycles.retain(|c| c.pid != pid);
        self.gc.stopped.remove(&pid);
    }

    /// Starts a new window of the per-window lenses (rss, whose pages
    /// resident now become the new window's "before"); live goroutines
    /// carry over.
    pub fn rotate(&mut self) {
        if let Some(rss) = self.rss.as_mut() {
            *rss = rss.rotate();
        }
        self.gc.cycles.clear();
    }
}
