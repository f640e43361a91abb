//! The `alloc-exact` lens: every Go heap allocation, counted by a uprobe
//! on each allocator entry point (a debugging mode: see its cost).

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::aggregate::{histogram, Cell};
use crate::render::summary::{Extras, SizePercentiles};
use crate::stack::StackKey;

/// `alloc-exact`: every heap allocation, summed by stack.
pub struct AllocExactAgg {
    pub by_stack: HashMap<StackKey, Cell>,
    pub sizes: Histogram<u64>,
}

impl Default for AllocExactAgg {
    fn default() -> Self {
        Self {
            by_stack: HashMap::new(),
            sizes: histogram(),
        }
    }
}

impl AllocExactAgg {
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

/// The lens's extras in `summary.json`: allocation size percentiles.
pub fn extras(a: &AllocExactAgg) -> Extras {
    let h = &a.sizes;
    let pct = if h.is_empty() {
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
    Extras::from([(
        "size_percentiles".to_string(),
        serde_json::to_value(pct).expect("plain struct"),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Stack;

    #[test]
    fn alloc_sums_per_stack() {
        let mut a = AllocExactAgg::default();
        a.add((1, Stack::Id(5)), 64);
        a.add((1, Stack::Id(5)), 64);
        a.add((1, Stack::Id(6)), 1000);
        assert_eq!(
            a.by_stack[&(1, Stack::Id(5))],
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
        a.add((1, Stack::Id(7)), 64 << 20);
        assert!(a.sizes.max() >= 64 << 20, "large sizes are not clamped");
    }
}
