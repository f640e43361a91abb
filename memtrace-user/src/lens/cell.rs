//! What every lens's aggregator shares: the per-stack cell, pages and
//! histograms.

use std::collections::HashMap;

use hdrhistogram::Histogram;

use crate::model::stack::StackKey;

pub const PAGE: u64 = 4096;
pub const PROT_NONE: u32 = 0;

pub fn page_round(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

/// A histogram for values from 1 to 2^40 (bytes or nanoseconds) at three
/// significant digits. Fixed bounds: an auto-resizing one would clamp
/// `saturating_record` to its initial range.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("valid bounds")
}

/// Value summed per stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub bytes: u64,
    pub objects: u64,
    /// alloc-exact: the bytes asked for, before the runtime's rounding
    /// (`bytes` is what it accounts).
    pub requested: u64,
}

/// Adds each range's length to its stack's cell.
pub fn sum_by_key(
    ranges: impl Iterator<Item = (u64, u64, StackKey)>,
    out: &mut HashMap<StackKey, Cell>,
) {
    for (s, e, k) in ranges {
        let c = out.entry(k).or_default();
        c.bytes += e - s;
        c.objects += 1;
    }
}
