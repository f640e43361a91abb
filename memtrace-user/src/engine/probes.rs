//! Uprobes per binary, shared by the processes that run it: a set is
//! attached when its first process is added and detached when its last
//! one leaves. Binaries are told apart by (device, inode), so a file
//! reached by several paths (or from several mount namespaces) is one.

use std::collections::{BTreeSet, HashMap};

use crate::kernel::Scope;

/// A file, by device and inode: the same binary whatever path or mount
/// namespace it was reached by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
}

impl BinaryId {
    /// The file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// One set of uprobes: a binary, in one process or in all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProbeKey {
    pub binary: BinaryId,
    pub scope: Scope,
}

/// Attached sets with the processes using each.
pub struct ProbeSets<L> {
    sets: HashMap<ProbeKey, (L, BTreeSet<u32>)>,
}

impl<L> Default for ProbeSets<L> {
    fn default() -> Self {
        Self {
            sets: HashMap::new(),
        }
    }
}

impl<L> ProbeSets<L> {
    /// Adds `pid` to an attached set; false if there is none yet.
    pub fn join(&mut self, key: ProbeKey, pid: u32) -> bool {
        match self.sets.get_mut(&key) {
            Some((_, pids)) => {
                pids.insert(pid);
                true
            }
            None => false,
        }
    }

    /// Records a newly attached set with its first process.
    pub fn insert(&mut self, key: ProbeKey, links: L, pid: u32) {
        self.sets.insert(key, (links, BTreeSet::from([pid])));
    }

    /// Removes `pid` from its set; returns the set's links if it was the
    /// last process (the caller detaches them).
    pub fn leave(&mut self, key: ProbeKey, pid: u32) -> Option<L> {
        let (_, pids) = self.sets.get_mut(&key)?;
        pids.remove(&pid);
        if !pids.is_empty() {
            return None;
        }
        self.sets.remove(&key).map(|(links, _)| links)
    }

    /// Number of attached sets.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Takes every set (at shutdown).
    pub fn take_all(&mut self) -> Vec<L> {
        self.sets.drain().map(|(_, (l, _))| l).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_process_out_gets_the_links() {
        let mut s: ProbeSets<&str> = ProbeSets::default();
        let k = ProbeKey {
            binary: BinaryId { dev: 1, ino: 2 },
            scope: Scope::AllProcesses,
        };
        assert!(!s.join(k, 10));
        s.insert(k, "links", 10);
        assert!(s.join(k, 11));
        assert_eq!(s.leave(k, 10), None);
        assert_eq!(s.leave(k, 11), Some("links"));
        assert!(s.is_empty());
        assert_eq!(s.leave(k, 11), None);
    }
}
