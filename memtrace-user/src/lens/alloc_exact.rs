//! The `alloc-exact` lens: every Go heap allocation, counted by a uprobe
//! on each allocator entry point (a debugging mode: see its cost).

use crate::model::extras::AllocExactExtras;
use crate::model::extras::SizePercentiles;
use std::collections::HashMap;

use hdrhistogram::Histogram;

use memtrace_common::AllocType;

use super::sizeclass::Rules;
use crate::kernel::decode::{Op, Resolved};
use crate::lens::cell::{histogram, Cell};
use crate::lens::instance::{of_pids, Instance, Window};
use crate::model::extras::LensExtras;
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use crate::model::stack::{StackKey, StackTable};

/// `alloc-exact`: every heap allocation, summed by stack.
pub struct AllocExactAgg {
    pub by_stack: HashMap<StackKey, Cell>,
    /// Requested sizes.
    pub sizes: Histogram<u64>,
    /// How each process's Go release rounds sizes (by pid).
    pub rules: HashMap<u32, Rules>,
    /// Allocations whose type could not be read (rounded as pointer-free).
    pub unknown_types: u64,
}

impl Default for AllocExactAgg {
    fn default() -> Self {
        Self {
            by_stack: HashMap::new(),
            sizes: histogram(),
            rules: HashMap::new(),
            unknown_types: 0,
        }
    }
}

impl AllocExactAgg {
    /// One allocation of `size` requested bytes: counted as the bytes the
    /// runtime accounts for it (its size class, header, pages).
    pub fn add(&mut self, key: StackKey, size: u64, class: AllocType) {
        let rules = self.rules.get(&key.0).copied().unwrap_or_default();
        if class == AllocType::Unknown {
            self.unknown_types += 1;
        }
        let c = self.by_stack.entry(key).or_default();
        c.bytes += rules.allocated(size, class);
        c.requested += size;
        c.objects += 1;
        self.sizes.saturating_record(size.max(1));
    }

    pub fn totals(&self) -> Cell {
        self.by_stack.values().fold(Cell::default(), |a, c| Cell {
            bytes: a.bytes + c.bytes,
            objects: a.objects + c.objects,
            requested: a.requested + c.requested,
        })
    }
}

impl Instance for AllocExactAgg {
    fn lens(&self) -> Lens {
        Lens::AllocExact
    }

    fn apply(&mut self, r: &Resolved) {
        if let Op::Alloc { size, class } = r.op {
            self.add(r.key, size, class);
        }
    }

    fn cells(&self, pids: &[u32], _: bool, _: &mut StackTable) -> Option<HashMap<StackKey, Cell>> {
        Some(of_pids(&self.by_stack, pids))
    }

    fn forget(&mut self, pid: u32) {
        self.by_stack.retain(|k, _| k.0 != pid);
    }

    fn extras(&self, _: &Profile, _: &mut dyn Window) -> Option<LensExtras> {
        Some(LensExtras::AllocExact(extras(self)))
    }
}

/// The lens's extras in `summary.json`: the bytes requested (before the
/// runtime's rounding, which `total` includes), allocations whose type
/// could not be read, and requested-size percentiles.
fn extras(a: &AllocExactAgg) -> AllocExactExtras {
    let h = &a.sizes;
    let size_percentiles = if h.is_empty() {
        SizePercentiles::default()
    } else {
        SizePercentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    };
    AllocExactExtras {
        size_percentiles,
        requested_bytes: a.totals().requested,
        unknown_types: a.unknown_types,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::stack::Stack;

    #[test]
    fn alloc_sums_per_stack() {
        let mut a = AllocExactAgg::default();
        let scan = AllocType::Scan;
        a.add((1, Stack::Id(5)), 64, scan);
        a.add((1, Stack::Id(5)), 64, scan);
        a.add((1, Stack::Id(6)), 1000, scan);
        assert_eq!(
            a.by_stack[&(1, Stack::Id(5))],
            Cell {
                bytes: 128,
                objects: 2,
                requested: 128,
            }
        );
        // 1000 bytes take the 1024-byte class (Go 1.21 and older: no
        // header, the default for an unknown process).
        assert_eq!(
            a.totals(),
            Cell {
                bytes: 1152,
                objects: 3,
                requested: 1128,
            }
        );
        // A Go 1.22+ process: the header moves 1000 pointerful bytes up a class.
        a.rules.insert(2, Rules { headers: true });
        a.add((2, Stack::Id(6)), 1000, scan);
        assert_eq!(a.by_stack[&(2, Stack::Id(6))].bytes, 1024);
        a.add((2, Stack::Id(6)), 1020, scan);
        assert_eq!(a.by_stack[&(2, Stack::Id(6))].bytes, 1024 + 1152);
        a.add((2, Stack::Id(6)), 8, AllocType::Unknown);
        assert_eq!(a.unknown_types, 1);
        assert_eq!(a.sizes.len(), 6);
        assert!(a.sizes.value_at_quantile(0.99) >= 999);
        a.add((1, Stack::Id(7)), 64 << 20, AllocType::NoScan);
        assert!(a.sizes.max() >= 64 << 20, "large sizes are not clamped");
    }
}
