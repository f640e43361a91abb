//! The engine's reader of pprof label sets: an event carries its
//! goroutine's `g.labels` pointer, and each pointer is read from the
//! target once (`binary::labels`), interned by content (`model::labels`),
//! and its stack split by the set (`StackTable::with_labels`).
//!
//! A label set is immutable, but once no goroutine holds it the garbage
//! collector frees it and the address may hold another, possibly before
//! user space reads an event sent while it held the first. So an event
//! carries a fingerprint of the set as the probe saw it (its first word,
//! and the map's hash seed or the first value behind it), the set is read
//! only if the fingerprint still stands, and what a pointer named is
//! forgotten at every GC cycle of its process.

use std::collections::HashMap;

use crate::binary::labels::{self, Format};
use crate::host::remote::RemoteMemory;
use crate::model::labels::{LabelSets, LabelStats};

/// Pointers remembered per process at most between two GC cycles.
const MAX_POINTERS: usize = 1 << 16;

#[derive(Default)]
pub struct LabelReader {
    pub sets: LabelSets,
    procs: HashMap<u32, Proc>,
    /// Pointers that did not read as a label set.
    unreadable: u64,
    /// Sets replaced before they were read (their address reused).
    stale: u64,
}

/// Opens a process's memory.
pub type Open<'a> = &'a dyn Fn(u32) -> std::io::Result<Box<dyn RemoteMemory>>;

struct Proc {
    format: Format,
    /// Opened at the first label set, after a launched target's exec.
    mem: Option<Box<dyn RemoteMemory>>,
    /// (Pointer, first word) → set id (`None`: empty or unreadable).
    by_ptr: HashMap<(u64, u64), Option<u32>>,
}

impl LabelReader {
    /// Reads `pid`'s label sets, laid out as `format`.
    pub fn add(&mut self, pid: u32, format: Format) {
        self.procs.insert(
            pid,
            Proc {
                format,
                mem: None,
                by_ptr: HashMap::new(),
            },
        );
    }

    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// A GC cycle of `pid` ended: what it freed may be reused.
    pub fn gc_cycle(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.by_ptr.clear();
        }
    }

    /// The set id of `pid`'s label set at `ptr`, if it reads as one; its
    /// memory is opened with `open` the first time.
    pub fn set_of(&mut self, pid: u32, (ptr, check): (u64, u64), open: Open) -> Option<u32> {
        let p = self.procs.get_mut(&pid)?;
        if let Some(&id) = p.by_ptr.get(&(ptr, check)) {
            return id;
        }
        if p.by_ptr.len() >= MAX_POINTERS {
            p.by_ptr.clear();
        }
        if p.mem.is_none() {
            match open(pid) {
                Ok(m) => p.mem = Some(m),
                Err(e) => {
                    log::debug!("pid {pid}: its memory cannot be opened: {e}");
                    self.unreadable += 1;
                    p.by_ptr.insert((ptr, check), None);
                    return None;
                }
            }
        }
        let mem = p.mem.as_deref()?;
        match p.format.check(mem, ptr) {
            Ok(w) if w == check => {}
            Ok(_) => {
                self.stale += 1;
                p.by_ptr.insert((ptr, check), None);
                return None;
            }
            Err(_) => {
                self.unreadable += 1;
                p.by_ptr.insert((ptr, check), None);
                return None;
            }
        }
        let read = labels::read(mem, ptr, p.format);
        // The target runs on: a set freed and its memory reused while it
        // was read reads as something else. Only a set whose fingerprint
        // stood before and after the read is believed.
        if !matches!(p.format.check(mem, ptr), Ok(w) if w == check) {
            self.stale += 1;
            p.by_ptr.insert((ptr, check), None);
            return None;
        }
        let id = match read {
            Ok(set) if !set.is_empty() => Some(self.sets.intern(set)),
            Ok(_) => None,
            Err(e) => {
                log::debug!("pid {pid}: {e}");
                self.unreadable += 1;
                None
            }
        };
        p.by_ptr.insert((ptr, check), id);
        id
    }

    pub fn stats(&self) -> LabelStats {
        LabelStats {
            unreadable: self.unreadable,
            stale: self.stale,
            ..self.sets.stats()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::remote::FakeMemory;

    #[test]
    fn a_pointer_is_read_once_per_gc_cycle() {
        let mem = FakeMemory::default();
        mem.map(0x9000, b"route".to_vec());
        mem.map(0x9100, b"/b".to_vec());
        mem.map_words(0x1000, &[0x2000, 1, 1]);
        mem.map_words(0x2000, &[0x9000, 5, 0x9100, 2]);
        let shared = std::rc::Rc::new(mem);
        struct Shared(std::rc::Rc<FakeMemory>);
        impl RemoteMemory for Shared {
            fn read(&self, a: u64, b: &mut [u8]) -> std::io::Result<()> {
                self.0.read(a, b)
            }
            fn write(&self, a: u64, d: &[u8]) -> std::io::Result<()> {
                self.0.write(a, d)
            }
        }
        let mut r = LabelReader::default();
        r.add(7, Format::Slice);
        let open = |_| Ok(Box::new(Shared(shared.clone())) as Box<dyn RemoteMemory>);
        let check = |w1: u64, w2: u64| memtrace_common::labels_check(w1, w2);
        let id = r.set_of(7, (0x1000, check(0x2000, 0x9100)), &open).unwrap();
        assert_eq!(r.sets.get(id), [("route".to_string(), "/b".to_string())]);
        // The set is freed and its address reused for another, with
        // another array: an event of the old set is not given the new one.
        shared.map_words(0x1000, &[0x3000, 1, 1]);
        shared.map_words(0x3000, &[0x9000, 5, 0x9200, 2]);
        shared.map(0x9200, b"/a".to_vec());
        let old = (0x1000, check(0x2000, 0x9100));
        assert_eq!(r.set_of(7, old, &open), Some(id), "remembered");
        r.gc_cycle(7);
        assert_eq!(r.set_of(7, old, &open), None, "stale");
        let again = r.set_of(7, (0x1000, check(0x3000, 0x9200)), &open).unwrap();
        assert_eq!(r.sets.get(again), [("route".to_string(), "/a".to_string())]);
        assert_eq!(r.set_of(7, (0x5555, 0), &open), None, "not a label set");
        assert_eq!(
            r.set_of(8, (0x1000, 0x3000), &open),
            None,
            "not a process with labels"
        );
        let st = r.stats();
        assert_eq!((st.unreadable, st.stale), (1, 1));
    }
}
