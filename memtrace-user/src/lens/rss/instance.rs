//! The rss lens as the engine calls it: which events it takes, what it
//! forgets, its window's (or the whole trace's) cells, and its extras.

use std::collections::HashMap;

use super::RssAgg;
use crate::binary::symbolize::RESIDENT_BEFORE;
use crate::kernel::decode::{Op, Resolved};
use crate::lens::cell::{Cell, PAGE};
use crate::lens::instance::{of_pids, Instance, Window};
use crate::model::extras::{LensExtras, RssExtras};
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use crate::model::stack::{StackKey, StackTable};

impl Instance for RssAgg {
    fn lens(&self) -> Lens {
        Lens::Rss
    }

    fn apply(&mut self, r: &Resolved) {
        self.now_ns = r.ts;
        let key = r.key;
        match r.op {
            Op::Mmap { addr, len, .. } => self.mmap(key, addr, len),
            Op::Munmap { addr, len } => self.munmap(key, addr, len),
            Op::Fault { addr, len } => {
                let mut page = addr;
                while page < addr.saturating_add(len.max(1)) {
                    self.fault(key, page);
                    page += PAGE;
                }
            }
            Op::FaultRun(run) => self.fault_run(key, run),
            Op::Madvise { addr, len, advice } => self.madvise(key, addr, len, advice),
            Op::Mremap {
                old,
                old_len,
                new,
                new_len,
            } => self.mremap(key, old, old_len, new, new_len),
            Op::Brk { result } => self.brk(key, result),
            _ => {}
        }
    }

    /// The window's growth by stack; the whole trace's resident memory by
    /// stack when `whole_trace`, with what was resident before tracing as
    /// one `[resident before tracing]` stack per process.
    fn cells(
        &self,
        pids: &[u32],
        whole_trace: bool,
        stacks: &mut StackTable,
    ) -> Option<HashMap<StackKey, Cell>> {
        if !whole_trace {
            return Some(of_pids(&self.by_stack(), pids));
        }
        let mut cells = of_pids(&self.life_by_stack(), pids);
        for &pid in pids {
            let bytes = self.resident_before_tracing(pid);
            if bytes > 0 {
                let id = stacks.intern(pid, vec![RESIDENT_BEFORE]);
                let c = cells.entry((pid, id)).or_default();
                c.bytes += bytes;
                c.objects += 1;
            }
        }
        Some(cells)
    }

    fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
        self.untracked.retain(|k, _| k.0 != pid);
        self.untracked_life.retain(|k, _| k.0 != pid);
        self.released_before.retain(|k, _| k.0 != pid);
    }

    /// What is resident now is "before" for the new window.
    fn rotate(&mut self) {
        *self = self.next_window();
    }

    fn extras(&self, _profile: &Profile, w: &mut dyn Window) -> Option<LensExtras> {
        let (start, end) = w.vmrss();
        let mut e = extras(self, w.pids(), start, end);
        e.whole_trace = w.whole_trace();
        Some(LensExtras::Rss(e))
    }
}

/// The lens's extras in `summary.json` for the processes `pids`.
pub fn extras(r: &RssAgg, pids: &[u32], vmrss_start: u64, vmrss_end: u64) -> RssExtras {
    let (grew, released) = r.net_growth(pids);
    RssExtras {
        net_growth: grew as i64 - released as i64,
        released_before_bytes: released,
        released_bytes: r.released_bytes,
        release_requested_bytes: r.release_requested_bytes,
        lazy_free_bytes: r.lazy_free_bytes,
        repeat_faults: r.repeat_faults,
        run_pages_released: r.run_pages_released,
        untracked_bytes: r.untracked.values().map(|c| c.bytes).sum(),
        thp: format!("{:?}", r.thp).to_lowercase(),
        vmrss_start,
        vmrss_end,
        vmrss_growth: vmrss_end as i64 - vmrss_start as i64,
        whole_trace: false,
    }
}
