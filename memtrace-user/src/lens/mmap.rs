//! The `mmap` lens: which stacks mapped address space (mmap minus munmap)
//! during the window.

use crate::kernel::decode::{Op, Resolved};
use crate::lens::instance::{of_pids, Instance, Window};
use crate::model::extras::{LensExtras, MmapExtras};
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use std::collections::HashMap;

use crate::kernel::Tracepoint;
use crate::lens::cell::{page_round, sum_by_key, Cell, PROT_NONE};
use crate::model::rangemap::RangeMap;
use crate::model::stack::{StackKey, StackTable};

/// mmap (enter and exit, paired for the address) and munmap.
pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint::new("mmap_enter", "syscalls", "sys_enter_mmap"),
    Tracepoint::new("mmap_exit", "syscalls", "sys_exit_mmap"),
    Tracepoint::new("munmap_enter", "syscalls", "sys_enter_munmap"),
];

/// `mmap`: address ranges mapped during the window and not unmapped since,
/// per process. PROT_NONE reservations are tracked (a later MAP_FIXED over
/// them replaces them) but hold no usable memory, so they count zero.
#[derive(Default)]
pub struct MmapAgg {
    regions: HashMap<u32, RangeMap<(StackKey, bool)>>,
    pub unmapped_bytes: u64,
}

impl MmapAgg {
    pub fn map(&mut self, key: StackKey, addr: u64, len: u64, prot: u32) {
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

impl Instance for MmapAgg {
    fn lens(&self) -> Lens {
        Lens::Mmap
    }

    fn apply(&mut self, r: &Resolved) {
        match r.op {
            Op::Mmap { addr, len, prot } => self.map(r.key, addr, len, prot),
            Op::Munmap { addr, len } => self.unmap(r.key.0, addr, len),
            _ => {}
        }
    }

    fn cells(&self, pids: &[u32], _: bool, _: &mut StackTable) -> Option<HashMap<StackKey, Cell>> {
        Some(of_pids(&self.by_stack(), pids))
    }

    fn forget(&mut self, pid: u32) {
        self.regions.remove(&pid);
    }

    fn extras(&self, _: &Profile, _: &mut dyn Window) -> Option<LensExtras> {
        Some(LensExtras::Mmap(MmapExtras {
            unmapped_bytes: self.unmapped_bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lens::cell::PAGE;
    use crate::model::stack::Stack;

    const RW: u32 = 3;

    #[test]
    fn mmap_then_partial_unmap() {
        let mut m = MmapAgg::default();
        m.map((1, Stack::Id(1)), 0x10000, 4 * PAGE, RW);
        m.unmap(1, 0x11000, PAGE); // hole in the middle
        let s = m.by_stack();
        assert_eq!(s[&(1, Stack::Id(1))].bytes, 3 * PAGE);
        assert_eq!(m.unmapped_bytes, PAGE);
        m.unmap(1, 0, 0x100000);
        assert!(m.by_stack().is_empty());
        assert_eq!(m.unmapped_bytes, 4 * PAGE);
    }

    #[test]
    fn fixed_mapping_replaces_reservation() {
        let mut m = MmapAgg::default();
        m.map((1, Stack::Id(1)), 0x100000, 64 * PAGE, PROT_NONE);
        assert!(m.by_stack().is_empty(), "reservations hold no memory");
        m.map((1, Stack::Id(2)), 0x100000 + 8 * PAGE, 8 * PAGE, RW);
        let s = m.by_stack();
        assert_eq!(s.len(), 1);
        assert_eq!(s[&(1, Stack::Id(2))].bytes, 8 * PAGE);
    }

    #[test]
    fn unmapping_what_predates_the_window_is_harmless() {
        let mut m = MmapAgg::default();
        m.unmap(9, 0x5000, PAGE);
        m.map((9, Stack::Id(3)), 0x9000, 1, RW); // rounded up to a page
        assert_eq!(m.by_stack()[&(9, Stack::Id(3))].bytes, PAGE);
        assert_eq!(m.unmapped_bytes, 0);
    }

    #[test]
    fn processes_are_separate() {
        let mut m = MmapAgg::default();
        m.map((1, Stack::Id(1)), 0x1000, PAGE, RW);
        m.map((2, Stack::Id(1)), 0x1000, PAGE, RW);
        m.unmap(1, 0x1000, PAGE);
        let s = m.by_stack();
        assert_eq!(s.len(), 1);
        assert!(s.contains_key(&(2, Stack::Id(1))));
    }
}
