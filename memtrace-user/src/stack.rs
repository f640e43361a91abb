//! Stacks as aggregation keys: each distinct user stack (a process and its
//! program counters, leaf first) is stored once in a [`StackTable`] and
//! named by a small id; events whose stack could not be had keep a
//! [`Stack`] that says why, so their bytes stay visible.

use std::collections::{HashMap, HashSet};

/// The stack of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stack {
    /// An interned stack: [`StackTable::frames`] has its pcs.
    Id(u32),
    /// The kernel could not capture it (`bpf_get_stack`'s errno).
    Failed(u32),
    /// It referred to a stack whose defining record was lost.
    Lost,
    /// The event carries none (syscall exits).
    None,
}

impl Stack {
    /// Why there are no frames, for a named `[stack unavailable: …]` frame.
    pub fn reason(self) -> &'static str {
        match self {
            Stack::Id(_) => "stack evicted",
            Stack::Failed(14) => "user stack unreadable",
            Stack::Failed(12) => "out of memory",
            Stack::Failed(_) => "capture failed",
            Stack::Lost => "lost with a dropped event",
            Stack::None => "no stack recorded",
        }
    }
}

/// A stack of one process: the aggregation key of every lens.
pub type StackKey = (u32, Stack);

/// Interned stacks, per process.
#[derive(Default)]
pub struct StackTable {
    ids: HashMap<(u32, Vec<u64>), u32>,
    stacks: Vec<Vec<u64>>,
}

impl StackTable {
    /// Interns `frames` (leaf first, the first one an exact pc) of process
    /// `pid`.
    pub fn intern(&mut self, pid: u32, frames: Vec<u64>) -> Stack {
        let next = self.stacks.len() as u32;
        let id = *self.ids.entry((pid, frames)).or_insert_with_key(|(_, f)| {
            self.stacks.push(f.clone());
            next
        });
        Stack::Id(id)
    }

    /// The pcs of an interned stack, leaf first.
    pub fn frames(&self, stack: Stack) -> Option<&[u64]> {
        match stack {
            Stack::Id(id) => self.stacks.get(id as usize).map(Vec::as_slice),
            _ => None,
        }
    }

    /// Number of distinct stacks interned.
    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    /// `key`'s stack with `pc` pushed as a new leaf.
    pub fn with_leaf(&mut self, key: StackKey, pc: u64) -> StackKey {
        let mut frames = vec![pc];
        frames.extend(self.frames(key.1).unwrap_or_default());
        (key.0, self.intern(key.0, frames))
    }

    /// Frees the stacks of process `pid` (it exited), except `keep`. Their
    /// ids stay allocated (empty), so no other id changes.
    pub fn forget(&mut self, pid: u32, keep: &HashSet<u32>) {
        let stacks = &mut self.stacks;
        self.ids.retain(|(p, _), id| {
            if *p != pid {
                return true;
            }
            if !keep.contains(id) {
                if let Some(s) = stacks.get_mut(*id as usize) {
                    *s = Vec::new();
                }
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_per_process_and_forgets() {
        let mut t = StackTable::default();
        let a = t.intern(1, vec![10, 11]);
        assert_eq!(t.intern(1, vec![10, 11]), a);
        let b = t.intern(2, vec![10, 11]);
        assert_ne!(a, b, "processes do not share ids");
        let kept = t.intern(1, vec![30]);
        let Stack::Id(kept_id) = kept else {
            unreachable!()
        };
        t.forget(1, &HashSet::from([kept_id]));
        assert_eq!(t.frames(a), Some(&[][..]));
        assert_eq!(t.frames(b), Some(&[10, 11][..]));
        assert_eq!(t.frames(kept), Some(&[30][..]));
        let c = t.intern(1, vec![10, 11]);
        assert!(c > kept, "ids are never reused");
        let leaf = t.with_leaf((2, b), 9);
        assert_eq!(t.frames(leaf.1), Some(&[9, 10, 11][..]));
        assert_eq!(Stack::Failed(14).reason(), "user stack unreadable");
        assert_eq!(t.frames(Stack::Lost), None);
    }
}
