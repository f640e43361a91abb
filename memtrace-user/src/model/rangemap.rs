//! Non-overlapping address ranges with a value each: the rss and mmap
//! lenses' picture of a process's address space.

use std::collections::BTreeMap;

/// Non-overlapping address ranges, each carrying a value. Inserting over a
/// range replaces what was there; removing splits ranges at the edges.
/// Adjacent ranges with equal values are merged, so sequentially touched
/// memory costs one entry, not one per page.
#[derive(Clone, Debug)]
pub struct RangeMap<V> {
    map: BTreeMap<u64, (u64, V)>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }
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

    /// The parts of `[start, end)` no range covers, in address order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        if let Some((_, &(e, _))) = self.map.range(..start).next_back() {
            at = at.max(e);
        }
        for (&s, &(e, _)) in self.map.range(start..end) {
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    pub fn insert(&mut self, start: u64, end: u64, v: V) {
        if start >= end {
            return;
        }
        self.remove(start, end);
        self.insert_free(start, end, v);
    }

    /// [`RangeMap::insert`] for a range the caller knows holds nothing
    /// (the fault path: one page at a time, after a [`RangeMap::get`]),
    /// which skips looking for what it would replace.
    pub fn insert_free(&mut self, start: u64, end: u64, v: V) {
        debug_assert!(!self.any_in(start, end), "insert_free over a held range");
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &(pe, pv))) = self.map.range(..start).next_back() {
            if pe == start && pv == v {
                s = ps;
            }
        }
        if let Some(&(ne, nv)) = self.map.get(&end) {
            if nv == v {
                self.map.remove(&end);
                e = ne;
            }
        }
        // The range before it, if they merge, is extended in place.
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn gaps_are_what_no_range_covers() {
        let mut m: RangeMap<u8> = RangeMap::default();
        m.insert(0x2000, 0x4000, 1);
        m.insert(0x6000, 0x7000, 2);
        assert_eq!(
            m.gaps(0x1000, 0x8000),
            [(0x1000, 0x2000), (0x4000, 0x6000), (0x7000, 0x8000)]
        );
        assert_eq!(m.gaps(0x3000, 0x6800), [(0x4000, 0x6000)]);
        assert!(m.gaps(0x2800, 0x3800).is_empty(), "inside one range");
        assert_eq!(m.gaps(0x7000, 0x7000), []);
    }

    #[test]
    fn inserting_into_a_free_range_merges_with_its_neighbours() {
        let mut m: RangeMap<u8> = RangeMap::default();
        // Every other page, then the pages between: one range at the end,
        // split where the value differs.
        for i in (0..64).step_by(2).chain((1..64).step_by(2)) {
            let v = if i == 33 { 8 } else { 7 };
            m.insert_free(0x1000 * i, 0x1000 * (i + 1), v);
        }
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [
                (0, 0x21000, 7),
                (0x21000, 0x22000, 8),
                (0x22000, 0x40000, 7)
            ]
        );
    }
}
