//! The engine's reader of pprof label sets: an event carries its
//! goroutine's `g.labels` pointer, and each pointer is read from the
//! target once (`binary::labels`), interned by content (`model::labels`),
//! and its stack split by the set (`StackTable::with_labels`).
//!
//! Most sets arrive copied: the first event under a set in a GC cycle
//! sends a copy ahead of itself, with a generation that the events under
//! it carry (`memtrace_common::label_capture`), so an event is matched
//! with the copy of its own set and nothing is read from the target.
//!
//! The others (too large to copy) are read from the target. A label set is immutable, but once no goroutine
//! holds it the garbage collector frees it and the address may hold
//! another, possibly before user space reads an event sent while it held
//! the first. So such an event carries a fingerprint of the set as the
//! probe saw it (its first word, and the map's hash seed or the first
//! value behind it), the set is read only if the fingerprint still
//! stands, and what a pointer named is forgotten at every GC cycle of its
//! process.

use std::collections::HashMap;

use memtrace_common::label_capture::captured_gen;

use crate::binary::labels::{self, Format};
use crate::host::remote::RemoteMemory;
use crate::kernel::decode;
use crate::model::labels::{LabelSets, LabelStats};

/// Pointers remembered per process at most between two GC cycles.
const MAX_POINTERS: usize = 1 << 16;
/// Captured sets remembered per process at most (as many as the kernel's
/// map of generations holds for all of them).
const MAX_CAPTURED: usize = 1 << 16;

#[derive(Default)]
pub struct LabelReader {
    pub sets: LabelSets,
    procs: HashMap<u32, Proc>,
    /// Pointers that did not read as a label set.
    unreadable: u64,
    /// Sets replaced before they were read (their address reused).
    stale: u64,
    /// Sets the probes copied.
    captured: u64,
    /// Events under a captured set no longer held (forgotten, or its
    /// record was lost).
    unmatched: u64,
}

/// Opens a process's memory.
pub type Open<'a> = &'a dyn Fn(u32) -> std::io::Result<Box<dyn RemoteMemory>>;

struct Proc {
    format: Format,
    /// Opened at the first label set, after a launched target's exec.
    mem: Option<Box<dyn RemoteMemory>>,
    /// (Pointer, first word) → set id (`None`: empty or unreadable).
    by_ptr: HashMap<(u64, u64), Option<u32>>,
    /// (Pointer, generation) → the captured set's id (`None`: empty or
    /// unreadable), and the `clock` of its last use.
    captured: HashMap<(u64, u64), (Option<u32>, u64)>,
    /// Captures of this process so far.
    clock: u64,
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
                captured: HashMap::new(),
                clock: 0,
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

    /// Takes `bytes` if it is a captured label set (and says so), keeping
    /// its set for the events that will name it.
    pub fn capture(&mut self, bytes: &[u8]) -> bool {
        let c = match decode::label_set(bytes) {
            None => return false,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                log::warn!("{e}");
                self.unreadable += 1;
                return true;
            }
        };
        let Some(p) = self.procs.get_mut(&c.pid) else {
            return true;
        };
        self.captured += 1;
        let id = match labels::from_captured(c.ptr, &c.labels) {
            Ok(set) if !set.is_empty() => Some(self.sets.intern(set)),
            Ok(_) => None,
            Err(e) => {
                log::debug!("pid {}: {e}", c.pid);
                self.unreadable += 1;
                None
            }
        };
        p.clock += 1;
        if p.captured.len() >= MAX_CAPTURED {
            // Keep what was used lately: a set held for long (a
            // goroutine's for its whole life) is used again and again.
            let recent = p.clock.saturating_sub(MAX_CAPTURED as u64 / 2);
            p.captured.retain(|_, (_, used)| *used >= recent);
            if p.captured.len() >= MAX_CAPTURED {
                p.captured.clear();
            }
        }
        p.captured.insert((c.ptr, c.gen), (id, p.clock));
        true
    }

    /// The set id of `pid`'s label set at `ptr`: its captured copy, or
    /// else what it reads as (its memory opened with `open` the first
    /// time).
    pub fn set_of(&mut self, pid: u32, (ptr, check): (u64, u64), open: Open) -> Option<u32> {
        let p = self.procs.get_mut(&pid)?;
        if let Some(gen) = captured_gen(check) {
            return match p.captured.get_mut(&(ptr, gen)) {
                Some((id, used)) => {
                    *used = p.clock;
                    *id
                }
                None => {
                    self.unmatched += 1;
                    None
                }
            };
        }
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
            captured: self.captured,
            unmatched: self.unmatched,
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

    /// A ring-buffer record of a captured set.
    fn record(pid: u32, ptr: u64, gen: u64, labels: &[(&str, &str)]) -> Vec<u8> {
        use memtrace_common::{CapturedLabel, Event};
        let ev = Event::label_set(pid, pid, ptr, gen, labels.len() as u32);
        // SAFETY: Event is plain old data.
        let mut out = unsafe {
            std::slice::from_raw_parts((&ev as *const Event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec();
        for (k, v) in labels {
            let mut l = CapturedLabel {
                key_len: k.len() as u32,
                value_len: v.len() as u32,
                key: [0; 64],
                value: [0; 128],
            };
            let (kn, vn) = (k.len().min(64), v.len().min(128));
            l.key[..kn].copy_from_slice(&k.as_bytes()[..kn]);
            l.value[..vn].copy_from_slice(&v.as_bytes()[..vn]);
            // SAFETY: CapturedLabel is plain old data.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    (&l as *const CapturedLabel).cast::<u8>(),
                    size_of::<CapturedLabel>(),
                )
            });
        }
        out
    }

    #[test]
    fn an_event_gets_the_copy_of_its_own_set_never_a_later_one() {
        use memtrace_common::label_capture::captured_check;
        let mut r = LabelReader::default();
        r.add(7, Format::Slice);
        let open = |_| -> std::io::Result<Box<dyn RemoteMemory>> { panic!("nothing is read") };
        assert!(r.capture(&record(7, 0x1000, 5, &[("route", "/a"), ("user", "u1")])));
        let a = r.set_of(7, (0x1000, captured_check(5)), &open).unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(r.sets.get(a), pairs(&[("route", "/a"), ("user", "u1")]));
        // The set is freed and another stored at its address: events of
        // each generation get their own set.
        assert!(r.capture(&record(7, 0x1000, 9, &[("route", "/b")])));
        let b = r.set_of(7, (0x1000, captured_check(9)), &open).unwrap();
        assert_eq!(r.sets.get(b), pairs(&[("route", "/b")]));
        assert_eq!(r.set_of(7, (0x1000, captured_check(5)), &open), Some(a));
        // A generation never captured (its record lost) names nothing.
        assert_eq!(r.set_of(7, (0x1000, captured_check(6)), &open), None);
        // Copies that are not text, or have an empty key, are refused and
        // counted; a long value is cut and marked.
        assert!(r.capture(&record(7, 0x2000, 11, &[("route", "/a\u{1}")])));
        assert!(r.capture(&record(7, 0x3000, 12, &[("", "x")])));
        assert_eq!(r.set_of(7, (0x2000, captured_check(11)), &open), None);
        let long = "é".repeat(100);
        assert!(r.capture(&record(7, 0x4000, 13, &[("k", &long)])));
        let cut = r.set_of(7, (0x4000, captured_check(13)), &open).unwrap();
        assert_eq!(r.sets.get(cut)[0].1, format!("{}…", "é".repeat(64)));
        // Not a label set record: left to the resolver.
        assert!(!r.capture(&[0u8; 80]));
        let st = r.stats();
        assert_eq!((st.captured, st.unmatched, st.unreadable), (5, 1, 2));
    }

    #[test]
    fn captured_sets_stay_bounded_and_the_ones_in_use_stay() {
        use memtrace_common::label_capture::captured_check;
        let mut r = LabelReader::default();
        r.add(7, Format::Slice);
        let open = |_| -> std::io::Result<Box<dyn RemoteMemory>> { panic!("nothing is read") };
        r.capture(&record(7, 0x10, 1, &[("worker", "w")]));
        for i in 0..(3 * MAX_CAPTURED as u64) {
            r.capture(&record(7, 0x100 + i * 16, 2 + i, &[("route", "/a")]));
            // A long-lived set is used all along.
            assert!(r.set_of(7, (0x10, captured_check(1)), &open).is_some());
        }
        assert!(r.procs[&7].captured.len() <= MAX_CAPTURED);
    }
}
