//! Ring-buffer records to resolved operations.
//!
//! A record is an [`Event`] header plus, when `stack > 0`, that many frames.
//! The [`Resolver`] interns stacks (so a stack is stored once, whatever the
//! number of events), resolves stack references to the stacks that defined them,
//! and pairs syscall enters (which carry the stack and arguments) with their
//! exits (which carry the result).

use std::collections::HashMap;

use memtrace_common::{Event, EventKind, EVENT_SIZE, STACK_NONE, STACK_REF};

use crate::aggregate::StackKey;

/// Stack id for an event whose stack reference was never defined (its
/// defining record was lost).
pub const STACK_LOST: i32 = -99_999;

/// What happened, with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc {
        size: u64,
    },
    Mmap {
        addr: u64,
        len: u64,
        prot: u64,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    /// Pages `[addr, addr + len)` faulted in (a run of contiguous faults).
    Fault {
        addr: u64,
        len: u64,
    },
    Madvise {
        addr: u64,
        len: u64,
        advice: u64,
    },
    Mremap {
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
    },
    Brk {
        result: u64,
    },
    /// A goroutine `g` was created, starting at `start_pc`.
    GoCreate {
        g: u64,
        start_pc: u64,
    },
    /// The goroutine `g` exited.
    GoExit {
        g: u64,
    },
    /// A GC cycle ended its mark phase (`ts`: monotonic ns).
    GcCycle {
        heap_live: u64,
        heap_goal: u64,
        ts: u64,
    },
    /// The world stopped (`stop`) or restarted.
    Stw {
        stop: bool,
        ts: u64,
    },
    /// The process executed a new program (agent discovery).
    ProcExec,
    /// The process's last thread exited.
    ProcExit,
}

/// An operation attributed to a process and stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub key: StackKey,
    pub op: Op,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its header says.
    #[error("short ring-buffer record: {got} bytes, want {want}")]
    Short { got: usize, want: usize },
    /// The kind tag is unknown (kernel and user space out of sync).
    #[error("unknown event kind {0}")]
    Kind(u32),
}

/// Splits a record into its header and inline frames.
pub fn decode(bytes: &[u8]) -> Result<(EventKind, Event, Vec<u64>), DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Short {
            got: bytes.len(),
            want: EVENT_SIZE,
        });
    }
    // SAFETY: length checked; Event is plain old data, read unaligned.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = EventKind::from_u32(ev.kind).ok_or(DecodeError::Kind(ev.kind))?;
    let n = ev.stack.max(0) as usize;
    let want = EVENT_SIZE + 8 * n;
    if bytes.len() < want {
        return Err(DecodeError::Short {
            got: bytes.len(),
            want,
        });
    }
    let frames = bytes[EVENT_SIZE..want]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect();
    Ok((kind, ev, frames))
}

/// Stateful decoding; see the module docs.
#[derive(Default)]
pub struct Resolver {
    ids: HashMap<(u32, Vec<u64>), i32>,
    stacks: Vec<Vec<u64>>,
    refs: HashMap<u64, i32>,
    pending: HashMap<u32, (StackKey, EventKind, Event)>,
    /// Syscall exits without their enter (tracing began mid-call, or the
    /// enter was dropped).
    pub unpaired: u64,
    /// Events whose stack reference was unknown.
    pub lost_stacks: u64,
    /// Records that failed to decode (counted by the reader).
    pub decode_errors: u64,
}

impl Resolver {
    /// Frames (leaf first) of an interned stack id.
    pub fn frames(&self, id: i32) -> Option<&[u64]> {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.stacks.get(i))
            .map(Vec::as_slice)
    }

    /// Number of distinct stacks seen.
    pub fn stack_count(&self) -> usize {
        self.stacks.len()
    }

    /// Interns a stack from elsewhere (frames leaf first, the first one an
    /// exact pc) and returns its id.
    pub fn intern(&mut self, tgid: u32, frames: Vec<u64>) -> i32 {
        let next = self.stacks.len() as i32 + 1;
        *self.ids.entry((tgid, frames)).or_insert_with_key(|(_, f)| {
            self.stacks.push(f.clone());
            next
        })
    }

    /// Frees the stacks interned for process `tgid` (it exited), except those
    /// the kernel may still reference by fingerprint for other processes.
    /// Their ids stay allocated (empty), so no other id changes.
    pub fn forget(&mut self, tgid: u32) {
        let referenced: std::collections::HashSet<i32> = self.refs.values().copied().collect();
        self.ids.retain(|(t, _), id| {
            if *t != tgid {
                return true;
            }
            if !referenced.contains(id) {
                if let Some(s) = usize::try_from(*id - 1)
                    .ok()
                    .and_then(|i| self.stacks.get_mut(i))
                {
                    *s = Vec::new();
                }
            }
            false
        });
    }

    /// The stack `key` with `pc` pushed as a new leaf frame.
    pub fn with_leaf(&mut self, key: StackKey, pc: u64) -> StackKey {
        let mut frames = vec![pc];
        frames.extend(self.frames(key.1).unwrap_or_default());
        (key.0, self.intern(key.0, frames))
    }

    fn key(&mut self, ev: &Event, frames: Vec<u64>) -> StackKey {
        let id = match ev.stack {
            n if n > 0 => {
                let id = self.intern(ev.tgid, frames);
                if ev.stack_ref != 0 {
                    self.refs.insert(ev.stack_ref, id);
                }
                id
            }
            STACK_REF => self.refs.get(&ev.stack_ref).copied().unwrap_or_else(|| {
                self.lost_stacks += 1;
                STACK_LOST
            }),
            err => err,
        };
        (ev.tgid, id)
    }

    /// Decodes one record; syscall enters yield nothing until their exit.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Resolved>, DecodeError> {
        let (kind, ev, frames) = decode(bytes)?;
        Ok(self.feed_event(kind, ev, frames))
    }

    /// Like [`Resolver::feed`], for a header already decoded (e.g. a fault
    /// run read from the kernel's per-CPU pending slot).
    pub fn feed_event(&mut self, kind: EventKind, ev: Event, frames: Vec<u64>) -> Option<Resolved> {
        let key = if ev.stack == STACK_NONE {
            (ev.tgid, STACK_NONE)
        } else {
            self.key(&ev, frames)
        };
        let op = match kind {
            EventKind::Alloc => Op::Alloc { size: ev.size },
            EventKind::Munmap => Op::Munmap {
                addr: ev.addr,
                len: ev.size,
            },
            EventKind::Fault => Op::Fault {
                addr: ev.addr,
                len: ev.size,
            },
            EventKind::Madvise => Op::Madvise {
                addr: ev.addr,
                len: ev.size,
                advice: ev.aux,
            },
            EventKind::GoExit => Op::GoExit { g: ev.addr },
            EventKind::ProcExec => Op::ProcExec,
            EventKind::ProcExit => Op::ProcExit,
            EventKind::GcCycle => Op::GcCycle {
                heap_live: ev.addr,
                heap_goal: ev.size,
                ts: ev.ts_ns,
            },
            EventKind::StwStop | EventKind::StwStart => Op::Stw {
                stop: kind == EventKind::StwStop,
                ts: ev.ts_ns,
            },
            EventKind::MmapEnter
            | EventKind::MremapEnter
            | EventKind::BrkEnter
            | EventKind::GoCreate => {
                self.pending.insert(ev.tid, (key, kind, ev));
                return None;
            }
            EventKind::MmapExit
            | EventKind::MremapExit
            | EventKind::BrkExit
            | EventKind::GoCreated => {
                let enter = match kind {
                    EventKind::MmapExit => EventKind::MmapEnter,
                    EventKind::MremapExit => EventKind::MremapEnter,
                    EventKind::GoCreated => EventKind::GoCreate,
                    _ => EventKind::BrkEnter,
                };
                let Some((key, _, e)) =
                    self.pending.remove(&ev.tid).filter(|(_, k, _)| *k == enter)
                else {
                    self.unpaired += 1;
                    return None;
                };
                let op = match kind {
                    EventKind::MmapExit => Op::Mmap {
                        addr: ev.addr,
                        len: e.size,
                        prot: e.aux & 0xffff_ffff,
                    },
                    EventKind::MremapExit => Op::Mremap {
                        old: e.addr,
                        old_len: e.size,
                        new: ev.addr,
                        new_len: e.aux2,
                    },
                    EventKind::GoCreated => {
                        // The start function is the goroutine's leaf frame.
                        let key = self.with_leaf(key, e.aux);
                        return Some(Resolved {
                            key,
                            op: Op::GoCreate {
                                g: ev.addr,
                                start_pc: e.aux,
                            },
                        });
                    }
                    _ => Op::Brk { result: ev.addr },
                };
                return Some(Resolved { key, op });
            }
        };
        Some(Resolved { key, op })
    }
}

#[cfg(test)]
pub fn encode(ev: &Event, frames: &[u64]) -> Vec<u8> {
    // SAFETY: Event is repr(C) without padding.
    let mut b =
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), EVENT_SIZE) }
            .to_vec();
    for f in frames {
        b.extend_from_slice(&f.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_a_process_frees_its_stacks_only() {
        let mut r = Resolver::default();
        let a = r.intern(1, vec![10, 11]);
        let b = r.intern(2, vec![20, 21]);
        let shared = r.intern(1, vec![30]);
        r.refs.insert(99, shared);
        r.forget(1);
        assert_eq!(r.frames(a), Some(&[][..]));
        assert_eq!(r.frames(b), Some(&[20, 21][..]));
        // Still referenced by a fingerprint: kept.
        assert_eq!(r.frames(shared), Some(&[30][..]));
        // A new stack gets a new id; old ids are not reused.
        let c = r.intern(1, vec![10, 11]);
        assert!(c > shared);
    }

    fn ev(kind: EventKind, tid: u32, stack: i32) -> Event {
        Event {
            kind: kind as u32,
            tgid: 7,
            tid,
            stack,
            ts_ns: 0,
            addr: 0,
            size: 0,
            aux: 0,
            aux2: 0,
            stack_ref: 0,
        }
    }

    #[test]
    fn round_trip_with_frames() {
        let e = Event {
            addr: 0x7000,
            size: 4096,
            aux: 3,
            aux2: 9,
            ..ev(EventKind::Fault, 8, 2)
        };
        let (k, d, f) = decode(&encode(&e, &[0x401000, 0x402000])).unwrap();
        assert_eq!(k, EventKind::Fault);
        assert_eq!(d, e);
        assert_eq!(f, vec![0x401000, 0x402000]);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(
            decode(&[0; 8]),
            Err(DecodeError::Short {
                got: 8,
                want: EVENT_SIZE
            })
        );
        let mut b = encode(&ev(EventKind::Alloc, 1, 0), &[]);
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Kind(99)));
        let truncated = encode(&ev(EventKind::Alloc, 1, 3), &[1, 2]);
        assert!(matches!(decode(&truncated), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn interns_and_reuses_stacks() {
        let mut r = Resolver::default();
        let a = r
            .feed(&encode(
                &Event {
                    size: 64,
                    stack_ref: 77,
                    ..ev(EventKind::Alloc, 1, 2)
                },
                &[10, 20],
            ))
            .unwrap()
            .unwrap();
        let b = r
            .feed(&encode(
                &Event {
                    size: 64,
                    stack_ref: 77,
                    ..ev(EventKind::Alloc, 9, STACK_REF)
                },
                &[],
            ))
            .unwrap()
            .unwrap();
        let c = r
            .feed(&encode(
                &Event {
                    size: 64,
                    ..ev(EventKind::Alloc, 2, 2)
                },
                &[10, 20],
            ))
            .unwrap()
            .unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, c.key, "identical stacks intern to one id");
        assert_eq!(r.frames(a.key.1), Some(&[10u64, 20][..]));
        assert_eq!(r.stack_count(), 1);
        // An unknown reference: explicit "lost", never dropped.
        let d = r
            .feed(&encode(
                &Event {
                    stack_ref: 78,
                    ..ev(EventKind::Alloc, 3, STACK_REF)
                },
                &[],
            ))
            .unwrap()
            .unwrap();
        assert_eq!(d.key, (7, STACK_LOST));
        assert_eq!(r.lost_stacks, 1);
        // Errors pass through as negative ids.
        let e = r
            .feed(&encode(&ev(EventKind::Alloc, 4, -14), &[]))
            .unwrap()
            .unwrap();
        assert_eq!(e.key, (7, -14));
    }

    #[test]
    fn pairs_syscalls_per_thread() {
        let mut r = Resolver::default();
        let enter = Event {
            size: 8192,
            aux: 3 | (0x22 << 32),
            ..ev(EventKind::MmapEnter, 5, 1)
        };
        assert_eq!(r.feed(&encode(&enter, &[99])).unwrap(), None);
        // Another thread's exit does not pair with it.
        assert_eq!(
            r.feed(&encode(
                &Event {
                    addr: 1,
                    ..ev(EventKind::MmapExit, 6, STACK_NONE)
                },
                &[]
            ))
            .unwrap(),
            None
        );
        assert_eq!(r.unpaired, 1);
        let exit = Event {
            addr: 0x7f00_0000_0000,
            ..ev(EventKind::MmapExit, 5, STACK_NONE)
        };
        let got = r.feed(&encode(&exit, &[])).unwrap().unwrap();
        assert_eq!(
            got.op,
            Op::Mmap {
                addr: 0x7f00_0000_0000,
                len: 8192,
                prot: 3
            }
        );
        assert_eq!(r.frames(got.key.1), Some(&[99u64][..]));
        // mremap and brk.
        let me = Event {
            addr: 0x1000,
            size: 0x2000,
            aux2: 0x3000,
            ..ev(EventKind::MremapEnter, 5, 1)
        };
        r.feed(&encode(&me, &[99])).unwrap();
        let mx = r
            .feed(&encode(
                &Event {
                    addr: 0x9000,
                    ..ev(EventKind::MremapExit, 5, STACK_NONE)
                },
                &[],
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            mx.op,
            Op::Mremap {
                old: 0x1000,
                old_len: 0x2000,
                new: 0x9000,
                new_len: 0x3000
            }
        );
        r.feed(&encode(&ev(EventKind::BrkEnter, 5, 1), &[99]))
            .unwrap();
        let bx = r
            .feed(&encode(
                &Event {
                    addr: 0x5000,
                    ..ev(EventKind::BrkExit, 5, STACK_NONE)
                },
                &[],
            ))
            .unwrap()
            .unwrap();
        assert_eq!(bx.op, Op::Brk { result: 0x5000 });
    }
}
