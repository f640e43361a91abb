//! Resolved events into per-lens aggregates, keyed by (process, stack).
//! Symbol names are attached later, once, per distinct stack. Each lens's
//! aggregator is an [`Instance`] in its own module; this module holds one
//! of each requested lens and routes events, forgetting and windows to
//! them, and keeps the GC view that every session has.

use std::collections::HashMap;

use crate::kernel::decode::{Op, Resolved};
use crate::lens::alloc_exact::AllocExactAgg;
use crate::lens::cell::Cell;
use crate::lens::gc::{GcAgg, GcCycle};
use crate::lens::goroutines::GoroutineAgg;
use crate::lens::instance::Instance;
use crate::lens::mmap::MmapAgg;
use crate::lens::rss::{RssAgg, Thp};
use crate::lens::sampled::Sampled;
use crate::model::lens::Lens;
use crate::model::stack::{StackKey, StackTable};

/// Every lens of one session; only the requested ones exist. The GC view
/// is always on. The engine reaches the typed aggregators for what only
/// one lens does (the rss lens's resident pages at attach, the goroutines
/// lens's existing goroutines); everything else goes through [`Instance`].
#[derive(Default)]
pub struct Aggregator {
    pub alloc_exact: Option<AllocExactAgg>,
    pub mmap: Option<MmapAgg>,
    pub rss: Option<RssAgg>,
    pub goroutines: Option<GoroutineAgg>,
    /// alloc and heap, which read the runtime's profile.
    sampled: Vec<Sampled>,
    pub gc: GcAgg,
    /// Events applied.
    pub events: u64,
    /// [`Aggregator::cells`] gives the whole trace's cells instead of the
    /// window's (set for an OOM report or a limit snapshot).
    pub whole_trace: bool,
}

impl Aggregator {
    pub fn new(lenses: &[Lens], thp: Thp) -> Self {
        let has = |l| lenses.contains(&l);
        Self {
            alloc_exact: has(Lens::AllocExact).then(AllocExactAgg::default),
            mmap: has(Lens::Mmap).then(MmapAgg::default),
            rss: has(Lens::Rss).then(|| RssAgg::new(thp)),
            goroutines: has(Lens::Goroutines).then(GoroutineAgg::default),
            sampled: [Lens::Alloc, Lens::Heap]
                .into_iter()
                .filter(|&l| has(l))
                .map(Sampled)
                .collect(),
            gc: GcAgg::default(),
            events: 0,
            whole_trace: false,
        }
    }

    /// Calls `f` on every lens of the session.
    fn each_mut(&mut self, mut f: impl FnMut(&mut dyn Instance)) {
        if let Some(a) = self.alloc_exact.as_mut() {
            f(a);
        }
        if let Some(m) = self.mmap.as_mut() {
            f(m);
        }
        if let Some(r) = self.rss.as_mut() {
            f(r);
        }
        if let Some(g) = self.goroutines.as_mut() {
            f(g);
        }
        for s in &mut self.sampled {
            f(s);
        }
    }

    /// The lens `lens` of the session, if it was requested.
    pub fn instance(&self, lens: Lens) -> Option<&dyn Instance> {
        let typed: [Option<&dyn Instance>; 4] = [
            self.alloc_exact.as_ref().map(|a| a as &dyn Instance),
            self.mmap.as_ref().map(|m| m as &dyn Instance),
            self.rss.as_ref().map(|r| r as &dyn Instance),
            self.goroutines.as_ref().map(|g| g as &dyn Instance),
        ];
        typed
            .into_iter()
            .flatten()
            .chain(self.sampled.iter().map(|s| s as &dyn Instance))
            .find(|i| i.lens() == lens)
    }

    pub fn apply(&mut self, r: &Resolved) {
        self.events += 1;
        let pid = r.key.0;
        match r.op {
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
            _ => self.each_mut(|i| i.apply(r)),
        }
    }

    /// The cells of `lens` for `pids` (see [`Instance::cells`]); `None`
    /// for a lens not requested or one that reads the runtime's profile.
    pub fn cells(
        &self,
        lens: Lens,
        pids: &[u32],
        stacks: &mut StackTable,
    ) -> Option<HashMap<StackKey, Cell>> {
        self.instance(lens)?.cells(pids, self.whole_trace, stacks)
    }

    /// Drops everything kept for `pid` (it exited, or execs another program).
    pub fn forget(&mut self, pid: u32) {
        self.each_mut(|i| i.forget(pid));
        self.gc.cycles.retain(|c| c.pid != pid);
        self.gc.stopped.remove(&pid);
    }

    /// Starts a new window of every lens (rss, whose pages resident now
    /// become the new window's "before"; live goroutines carry over).
    pub fn rotate(&mut self) {
        self.each_mut(|i| i.rotate());
        self.gc.cycles.clear();
    }
}
