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
    /// Its process already has as many distinct stacks as the table keeps
    /// per process ([`StackTable::set_cap`]).
    Capped,
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
            Stack::Failed(61) => "no user frames",
            Stack::Failed(_) => "capture failed",
            Stack::Lost => "lost with a dropped event",
            Stack::Capped => "over the per-process stack cap",
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
    /// Distinct stacks held per process, and the most it may hold.
    per_pid: HashMap<u32, usize>,
    cap: Option<usize>,
    /// Stacks turned away by the cap.
    pub capped: u64,
    /// A stack under a label set, by (process, stack, set), and each such
    /// stack's set.
    labeled: HashMap<(u32, u32, u32), u32>,
    label_sets: HashMap<u32, u32>,
}

impl StackTable {
    /// Interns `frames` (leaf first, the first one an exact pc) of process
    /// `pid`.
    pub fn intern(&mut self, pid: u32, frames: Vec<u64>) -> Stack {
        let key = (pid, frames);
        if let Some(&id) = self.ids.get(&key) {
            return Stack::Id(id);
        }
        let held = self.per_pid.entry(pid).or_default();
        if self.cap.is_some_and(|cap| *held >= cap) {
            self.capped += 1;
            return Stack::Capped;
        }
        *held += 1;
        let id = self.stacks.len() as u32;
        self.stacks.push(key.1.clone());
        self.ids.insert(key, id);
        Stack::Id(id)
    }

    /// Keeps at most `cap` distinct stacks per process (a long-lived agent's
    /// memory bound); later new stacks of that process become
    /// [`Stack::Capped`], their values kept under a named frame.
    pub fn set_cap(&mut self, cap: Option<usize>) {
        self.cap = cap;
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

    /// `key`'s stack under label set `set` (see `model::labels`): the same
    /// frames, a stack of its own, so that every lens's cells split by
    /// label set. Counted against the process's cap; past it, or for a
    /// stack with no frames, the stack stays unlabeled.
    pub fn with_labels(&mut self, key: StackKey, set: u32) -> StackKey {
        let (pid, Stack::Id(base)) = key else {
            return key;
        };
        if let Some(&id) = self.labeled.get(&(pid, base, set)) {
            return (pid, Stack::Id(id));
        }
        let held = self.per_pid.entry(pid).or_default();
        if self.cap.is_some_and(|cap| *held >= cap) {
            return key;
        }
        *held += 1;
        let id = self.stacks.len() as u32;
        let frames = self.stacks.get(base as usize).cloned().unwrap_or_default();
        self.stacks.push(frames);
        self.labeled.insert((pid, base, set), id);
        self.label_sets.insert(id, set);
        (pid, Stack::Id(id))
    }

    /// The label set of a stack made by [`StackTable::with_labels`].
    pub fn label_set(&self, stack: Stack) -> Option<u32> {
        match stack {
            Stack::Id(id) => self.label_sets.get(&id).copied(),
            _ => None,
        }
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
        self.per_pid.remove(&pid);
        let (stacks, sets) = (&mut self.stacks, &mut self.label_sets);
        self.labeled.retain(|(p, _, _), id| {
            if *p == pid {
                sets.remove(id);
                if let Some(s) = stacks.get_mut(*id as usize) {
                    *s = Vec::new();
                }
            }
            *p != pid
        });
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
        t.set_cap(Some(2));
        assert!(matches!(t.intern(3, vec![1]), Stack::Id(_)));
        assert!(matches!(t.intern(3, vec![2]), Stack::Id(_)));
        assert_eq!(t.intern(3, vec![3]), Stack::Capped);
        assert!(
            matches!(t.intern(3, vec![1]), Stack::Id(_)),
            "known stacks stay"
        );
        assert!(matches!(t.intern(4, vec![3]), Stack::Id(_)), "per process");
        assert_eq!(t.capped, 1);
        t.forget(3, &HashSet::new());
        assert!(matches!(t.intern(3, vec![3]), Stack::Id(_)));
        assert_eq!(t.frames(Stack::Lost), None);
    }
}
