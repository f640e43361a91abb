//! pprof label sets, interned: each distinct set once, named by a small
//! id. What a program can put in labels is unbounded (a request id per
//! request); what memtrace keeps is not. Keys and values are cut to
//! [`MAX_CHARS`], a session keeps [`MAX_KEYS`] keys and [`MAX_VALUES`]
//! values of each, and a value past that is folded into [`OTHER`] (a key
//! past that is dropped), counted in [`LabelStats`]. Combinations are
//! bounded too: past [`MAX_SETS`] distinct sets, a new one keeps its keys
//! with every value [`OTHER`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};

use serde::Serialize;

/// A label set: (key, value) pairs, sorted by key.
pub type LabelSet = Vec<(String, String)>;

/// The value of a key an event's labels do not have.
pub const NO_LABELS: &str = "[no labels]";
/// The value that stands for the values past [`MAX_VALUES`].
pub const OTHER: &str = "[other]";
pub const MAX_KEYS: usize = 32;
pub const MAX_VALUES: usize = 500;
pub const MAX_CHARS: usize = 128;
pub const MAX_SETS: usize = 10_000;
/// Distinct folded values counted exactly up to this many.
const MAX_FOLDED_COUNTED: usize = 1 << 20;

/// What the bounds did, for `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelStats {
    /// Distinct label sets kept.
    pub sets: usize,
    /// Distinct values kept, per key.
    pub values: BTreeMap<String, usize>,
    /// Distinct values folded into `[other]`, and keys dropped.
    pub folded_values: usize,
    pub dropped_keys: usize,
    /// Sets past [`MAX_SETS`], kept with every value `[other]`.
    pub folded_sets: u64,
    /// Label sets that could not be read from the target, and those whose
    /// address held another set by the time they were read (counted by
    /// the engine; their events count under `[no labels]`).
    pub unreadable: u64,
    pub stale: u64,
    /// Sets copied in the kernel by the first event under them (in a GC
    /// cycle).
    pub captured: u64,
    /// Events under a captured set that was no longer held (their record
    /// lost, or forgotten); they count under `[no labels]`.
    pub unmatched: u64,
    /// Sets the probes could not copy (too large, or unreadable):
    /// read from the target instead.
    pub not_captured: u64,
}

#[derive(Default)]
pub struct LabelSets {
    sets: Vec<LabelSet>,
    ids: HashMap<LabelSet, u32>,
    values: BTreeMap<String, HashSet<String>>,
    folded: HashSet<u64>,
    dropped: HashSet<String>,
    folded_sets: u64,
}

impl LabelSets {
    /// The id of `raw`'s set once bounded.
    pub fn intern(&mut self, raw: LabelSet) -> u32 {
        let mut set: LabelSet = raw
            .into_iter()
            .filter_map(|(k, v)| self.bound(cut(k), cut(v)))
            .collect();
        set.sort();
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        if self.sets.len() >= MAX_SETS {
            self.folded_sets += 1;
            for (_, v) in &mut set {
                *v = OTHER.to_string();
            }
            if let Some(&id) = self.ids.get(&set) {
                return id;
            }
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.ids.insert(set, id);
        id
    }

    fn bound(&mut self, k: String, v: String) -> Option<(String, String)> {
        if !self.values.contains_key(&k) && self.values.len() >= MAX_KEYS {
            if self.dropped.len() < MAX_KEYS {
                self.dropped.insert(k);
            }
            return None;
        }
        let values = self.values.entry(k.clone()).or_default();
        if values.contains(&v) || values.len() < MAX_VALUES {
            values.insert(v.clone());
            return Some((k, v));
        }
        if self.folded.len() < MAX_FOLDED_COUNTED {
            let mut h = DefaultHasher::new();
            (&k, &v).hash(&mut h);
            self.folded.insert(h.finish());
        }
        Some((k, OTHER.to_string()))
    }

    /// The set named `id` (empty when unknown).
    pub fn get(&self, id: u32) -> &[(String, String)] {
        self.sets.get(id as usize).map_or(&[], Vec::as_slice)
    }

    pub fn stats(&self) -> LabelStats {
        LabelStats {
            sets: self.sets.len(),
            values: self
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.len()))
                .collect(),
            folded_values: self.folded.len(),
            dropped_keys: self.dropped.len(),
            folded_sets: self.folded_sets,
            unreadable: 0,
            stale: 0,
            captured: 0,
            unmatched: 0,
            not_captured: 0,
        }
    }
}

/// `s` cut to [`MAX_CHARS`] characters (an ellipsis marks the cut).
fn cut(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equal_sets_share_an_id_whatever_their_order() {
        let mut s = LabelSets::default();
        let a = s.intern(set(&[("route", "/b"), ("tenant", "t1")]));
        let b = s.intern(set(&[("tenant", "t1"), ("route", "/b")]));
        assert_eq!(a, b);
        assert_ne!(a, s.intern(set(&[("route", "/a")])));
        assert_eq!(
            s.get(a),
            set(&[("route", "/b"), ("tenant", "t1")]).as_slice()
        );
    }

    #[test]
    fn values_past_the_bound_fold_into_other_and_are_counted() {
        let mut s = LabelSets::default();
        for i in 0..MAX_VALUES + 1000 {
            s.intern(set(&[("id", &i.to_string()), ("route", "/a")]));
        }
        let st = s.stats();
        assert_eq!(st.values["id"], MAX_VALUES);
        assert_eq!(st.folded_values, 1000);
        assert_eq!(st.sets, MAX_VALUES + 1, "one set for every folded value");
        let last = s.intern(set(&[("id", "123456"), ("route", "/a")]));
        assert_eq!(s.get(last)[0], ("id".to_string(), OTHER.to_string()));
        // A long value is cut; keys past the bound are dropped.
        let long = s.intern(set(&[("k", &"v".repeat(1000))]));
        assert_eq!(s.get(long)[0].1.chars().count(), MAX_CHARS + 1);
        for k in 0..MAX_KEYS + 3 {
            s.intern(set(&[(&format!("key{k}"), "x")]));
        }
        assert_eq!(s.stats().dropped_keys, 6);
    }

    #[test]
    fn combinations_past_the_bound_keep_their_keys_only() {
        let mut s = LabelSets::default();
        for a in 0..200 {
            for b in 0..60 {
                s.intern(set(&[("a", &a.to_string()), ("b", &b.to_string())]));
            }
        }
        let st = s.stats();
        assert_eq!(st.sets, MAX_SETS + 1, "the sets kept and one of [other]s");
        assert_eq!(st.folded_sets, 200 * 60 - MAX_SETS as u64);
    }
}
