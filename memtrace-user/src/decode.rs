//! Ring-buffer records to resolved operations.
//!
//! A record is an [`Event`] header plus, when its stack field says so, the
//! frames. The [`Resolver`] interns stacks (so a stack is stored once,
//! whatever the number of events), resolves stack references to the stacks
//! that defined them, and pairs syscall enters (which carry the stack and
//! arguments) with their exits (which carry the result).

use std::collections::HashMap;

use memtrace_common::{Event, EventKind, HoldPoint, StackField, EVENT_SIZE};

use crate::lens::rss::Run;
use crate::stack::{Stack, StackKey, StackTable};

/// What happened, with its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc {
        size: u64,
        class: memtrace_common::AllocType,
    },
    Mmap {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Munmap {
        addr: u64,
        len: u64,
    },
    /// Pages `[addr, addr + len)` faulted in.
    Fault {
        addr: u64,
        len: u64,
    },
    /// Faults the kernel merged into a run (the run ended, or is read in
    /// progress).
    FaultRun(Run),
    Madvise {
        addr: u64,
        len: u64,
        advice: u32,
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
        /// Marked live by the previous cycle.
        heap_marked: u64,
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
    /// The process holds itself at `point` (`stopped`: the stop signal was
    /// sent); `code` is its exit code or fatal signal where there is one.
    Hold {
        point: HoldPoint,
        code: u64,
        stopped: bool,
    },
}

/// An operation attributed to a process and stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub key: StackKey,
    pub op: Op,
    /// When it happened (monotonic ns; 0 for records read from maps).
    pub ts: u64,
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
    let n = match ev.stack_field() {
        StackField::Frames(n) => n as usize,
        _ => 0,
    };
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
    /// Every stack seen, interned.
    pub stacks: StackTable,
    /// Kernel stack reference → interned id.
    refs: HashMap<u64, u32>,
    pending: HashMap<u32, (StackKey, EventKind, Event)>,
    /// Syscall exits without their enter (tracing began mid-call, or the
    /// enter was dropped).
    pub unpaired: u64,
    /// Events whose stack reference was unknown.
    pub lost_stacks: u64,
    /// Records that failed to decode.
    pub decode_errors: u64,
}

impl Resolver {
    /// Frees what is kept for process `pid` (it exited), except stacks the
    /// kernel may still reference by fingerprint for other processes.
    pub fn forget(&mut self, pid: u32) {
        let referenced = self.refs.values().copied().collect();
        self.stacks.forget(pid, &referenced);
        self.pending.retain(|_, (k, _, _)| k.0 != pid);
    }

    fn key(&mut self, ev: &Event, frames: Vec<u64>) -> StackKey {
        let stack = match ev.stack_field() {
            StackField::Frames(_) => {
                let stack = self.stacks.intern(ev.tgid, frames);
                if let (Stack::Id(id), true) = (stack, ev.stack_ref != 0) {
                    self.refs.insert(ev.stack_ref, id);
                }
                stack
            }
            StackField::Ref => match self.refs.get(&ev.stack_ref) {
                Some(&id) => Stack::Id(id),
                None => {
                    self.lost_stacks += 1;
                    Stack::Lost
                }
            },
            StackField::None => Stack::None,
            StackField::Error(errno) => Stack::Failed(errno),
        };
        (ev.tgid, stack)
    }

    /// Decodes one record; syscall enters yield nothing until their exit.
    /// A record that does not decode is counted and skipped.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<Resolved> {
        match decode(bytes) {
            Ok((kind, ev, frames)) => self.feed_event(kind, ev, frames),
            Err(e) => {
                self.decode_errors += 1;
                log::warn!("{e}");
                None
            }
        }
    }

    /// Like [`Resolver::feed`], for a header already decoded.
    pub fn feed_event(&mut self, kind: EventKind, ev: Event, frames: Vec<u64>) -> Option<Resolved> {
        // A run read in progress whose first record is still on its way
        // (it is read again, or sent when it ends).
        if kind == EventKind::FaultRunSoFar && !self.refs.contains_key(&ev.stack_ref) {
            return None;
        }
        let key = self.key(&ev, frames);
        // The last run under an ephemeral reference has ended: nothing
        // refers to it any more.
        if kind == EventKind::FaultRun && memtrace_common::is_ephemeral_ref(ev.stack_ref) {
            self.refs.remove(&ev.stack_ref);
        }
        let op = match kind {
            EventKind::Alloc => Op::Alloc {
                size: ev.size,
                class: ev.alloc_type(),
            },
            EventKind::Munmap => Op::Munmap {
                addr: ev.addr,
                len: ev.size,
            },
            EventKind::Fault => Op::Fault {
                addr: ev.addr,
                len: ev.size,
            },
            EventKind::FaultRun | EventKind::FaultRunContinued | EventKind::FaultRunSoFar => {
                Op::FaultRun(Run {
                    tid: ev.tid,
                    first: ev.addr,
                    stride: ev.run_stride(),
                    count: ev.size,
                    start_ns: ev.run_start_ns(),
                    ended: kind != EventKind::FaultRunSoFar,
                })
            }
            EventKind::Madvise => Op::Madvise {
                addr: ev.addr,
                len: ev.size,
                advice: ev.advice(),
            },
            EventKind::GoExit => Op::GoExit { g: ev.addr },
            EventKind::ProcExec => Op::ProcExec,
            EventKind::ProcExit => Op::ProcExit,
            EventKind::Hold => Op::Hold {
                point: ev.hold_point()?,
                code: ev.size,
                stopped: ev.hold_stopped(),
            },
            EventKind::GcCycle => {
                let (heap_live, heap_goal) = ev.heap();
                Op::GcCycle {
                    heap_live,
                    heap_goal,
                    heap_marked: ev.heap_marked(),
                    ts: ev.ts_ns,
                }
            }
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
            | EventKind::GoCreated => return self.pair(kind, &ev),
            // The start function is the goroutine's leaf frame.
            EventKind::GoSpawned => {
                let key = self.stacks.with_leaf(key, ev.start_pc());
                return Some(Resolved {
                    key,
                    op: Op::GoCreate {
                        g: ev.addr,
                        start_pc: ev.start_pc(),
                    },
                    ts: ev.ts_ns,
                });
            }
        };
        Some(Resolved {
            key,
            op,
            ts: ev.ts_ns,
        })
    }

    /// An exit record with its thread's pending enter.
    fn pair(&mut self, kind: EventKind, ev: &Event) -> Option<Resolved> {
        let enter = match kind {
            EventKind::MmapExit => EventKind::MmapEnter,
            EventKind::MremapExit => EventKind::MremapEnter,
            EventKind::GoCreated => EventKind::GoCreate,
            _ => EventKind::BrkEnter,
        };
        let Some((key, _, e)) = self.pending.remove(&ev.tid).filter(|(_, k, _)| *k == enter) else {
            self.unpaired += 1;
            return None;
        };
        let (key, op) = match kind {
            EventKind::MmapExit => (
                key,
                Op::Mmap {
                    addr: ev.addr,
                    len: e.size,
                    prot: e.prot(),
                },
            ),
            EventKind::MremapExit => (
                key,
                Op::Mremap {
                    old: e.addr,
                    old_len: e.size,
                    new: ev.addr,
                    new_len: e.new_len(),
                },
            ),
            // The start function is the goroutine's leaf frame.
            EventKind::GoCreated => (
                self.stacks.with_leaf(key, e.start_pc()),
                Op::GoCreate {
                    g: ev.addr,
                    start_pc: e.start_pc(),
                },
            ),
            _ => (key, Op::Brk { result: ev.addr }),
        };
        Some(Resolved {
            key,
            op,
            ts: ev.ts_ns,
        })
    }
}

/// A record's bytes: the header, then `frames` (what the probes send).
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
    use memtrace_common::AllocType;

    fn with_stack(mut ev: Event, stack: StackField, stack_ref: u64) -> Event {
        ev.stack = stack.encode();
        ev.stack_ref = stack_ref;
        ev
    }

    #[test]
    fn a_run_read_before_its_first_page_arrived_waits() {
        let run = memtrace_common::FaultRun {
            tgid: 7,
            tid: 8,
            first: 0x7000,
            stride: 4096,
            count: 3,
            stack_ref: 5,
            start_ns: 11,
            ..Default::default()
        };
        let mut r = Resolver::default();
        let so_far = Event::fault_run(EventKind::FaultRunSoFar, &run);
        assert_eq!(r.feed(&encode(&so_far, &[])), None);
        assert_eq!(r.lost_stacks, 0, "not lost: read again later");
        // The first page defines the reference; then the run resolves.
        let first = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(1), 5);
        let f = r.feed(&encode(&first, &[0x401000])).unwrap();
        let ended = Event::fault_run(EventKind::FaultRun, &run);
        let got = r.feed(&encode(&ended, &[])).unwrap();
        assert_eq!(got.key, f.key);
        assert_eq!(
            got.op,
            Op::FaultRun(Run {
                tid: 8,
                first: 0x7000,
                stride: 4096,
                count: 3,
                start_ns: 11,
                ended: true,
            })
        );
    }

    #[test]
    fn an_ephemeral_reference_lasts_until_its_last_run_ends() {
        let eph = memtrace_common::EPHEMERAL_REF | (1 << 48) | 3;
        let mut run = memtrace_common::FaultRun {
            tgid: 7,
            tid: 8,
            first: 0x7000,
            stride: 4096,
            count: 2,
            stack_ref: eph,
            start_ns: 11,
            ..Default::default()
        };
        let mut r = Resolver::default();
        let first = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(1), eph);
        let f = r.feed(&encode(&first, &[0x401000])).unwrap();
        // Continued: the next run goes on under the same reference.
        let continued = Event::fault_run(EventKind::FaultRunContinued, &run);
        let got = r.feed(&encode(&continued, &[])).unwrap();
        assert_eq!(got.key, f.key);
        assert!(matches!(got.op, Op::FaultRun(Run { ended: true, .. })));
        (run.first, run.start_ns, run.count) = (0x9000, 12, 1);
        let so_far = Event::fault_run(EventKind::FaultRunSoFar, &run);
        assert_eq!(r.feed(&encode(&so_far, &[])).unwrap().key, f.key);
        // The last run ends: the reference goes.
        let last = Event::fault_run(EventKind::FaultRun, &run);
        assert_eq!(r.feed(&encode(&last, &[])).unwrap().key, f.key);
        assert!(!r.refs.contains_key(&eph));
        assert_eq!(r.feed(&encode(&so_far, &[])), None, "a stale read waits");
        assert_eq!(r.lost_stacks, 0);
        // A shared reference stays.
        let shared = with_stack(Event::fault(7, 8, 0x20000, 4096), StackField::Frames(1), 9);
        r.feed(&encode(&shared, &[0x402000])).unwrap();
        (run.stack_ref, run.start_ns) = (9, 13);
        r.feed(&encode(&Event::fault_run(EventKind::FaultRun, &run), &[]))
            .unwrap();
        assert!(r.refs.contains_key(&9));
    }

    #[test]
    fn round_trip_with_frames() {
        let e = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(2), 0);
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
        let mut b = encode(&Event::alloc(7, 1, 1, AllocType::Scan), &[]);
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Kind(99)));
        let truncated = encode(
            &with_stack(
                Event::alloc(7, 1, 1, AllocType::Scan),
                StackField::Frames(3),
                0,
            ),
            &[1, 2],
        );
        assert!(matches!(decode(&truncated), Err(DecodeError::Short { .. })));
        let mut r = Resolver::default();
        assert_eq!(r.feed(&truncated), None);
        assert_eq!(r.decode_errors, 1, "bad records are counted");
    }

    #[test]
    fn interns_and_reuses_stacks() {
        let mut r = Resolver::default();
        let defining = with_stack(
            Event::alloc(7, 1, 64, AllocType::Scan),
            StackField::Frames(2),
            77,
        );
        let a = r.feed(&encode(&defining, &[10, 20])).unwrap();
        let reference = with_stack(Event::alloc(7, 9, 64, AllocType::Scan), StackField::Ref, 77);
        let b = r.feed(&encode(&reference, &[])).unwrap();
        let again = with_stack(
            Event::alloc(7, 2, 64, AllocType::Scan),
            StackField::Frames(2),
            0,
        );
        let c = r.feed(&encode(&again, &[10, 20])).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key, c.key, "identical stacks intern to one id");
        assert_eq!(r.stacks.frames(a.key.1), Some(&[10u64, 20][..]));
        assert_eq!(r.stacks.len(), 1);
        // An unknown reference: explicit "lost", never dropped.
        let unknown = with_stack(Event::alloc(7, 3, 64, AllocType::Scan), StackField::Ref, 78);
        let d = r.feed(&encode(&unknown, &[])).unwrap();
        assert_eq!(d.key, (7, Stack::Lost));
        assert_eq!(r.lost_stacks, 1);
        // Capture errors pass through with their errno.
        let failed = with_stack(
            Event::alloc(7, 4, 64, AllocType::Scan),
            StackField::Error(14),
            0,
        );
        let e = r.feed(&encode(&failed, &[])).unwrap();
        assert_eq!(e.key, (7, Stack::Failed(14)));
    }

    #[test]
    fn pairs_syscalls_per_thread() {
        let mut r = Resolver::default();
        let enter = with_stack(
            Event::mmap_enter(7, 5, 8192, 3, 0x22),
            StackField::Frames(1),
            0,
        );
        assert_eq!(r.feed(&encode(&enter, &[99])), None);
        // Another thread's exit does not pair with it.
        let other = Event::syscall_exit(EventKind::MmapExit, 7, 6, 1);
        assert_eq!(r.feed(&encode(&other, &[])), None);
        assert_eq!(r.unpaired, 1);
        let exit = Event::syscall_exit(EventKind::MmapExit, 7, 5, 0x7f00_0000_0000);
        let got = r.feed(&encode(&exit, &[])).unwrap();
        assert_eq!(
            got.op,
            Op::Mmap {
                addr: 0x7f00_0000_0000,
                len: 8192,
                prot: 3
            }
        );
        assert_eq!(r.stacks.frames(got.key.1), Some(&[99u64][..]));
        // mremap and brk.
        let me = with_stack(
            Event::mremap_enter(7, 5, 0x1000, 0x2000, 0x3000),
            StackField::Frames(1),
            0,
        );
        r.feed(&encode(&me, &[99]));
        let mx = r
            .feed(&encode(
                &Event::syscall_exit(EventKind::MremapExit, 7, 5, 0x9000),
                &[],
            ))
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
        let be = with_stack(Event::brk_enter(7, 5, 0), StackField::Frames(1), 0);
        r.feed(&encode(&be, &[99]));
        let bx = r
            .feed(&encode(
                &Event::syscall_exit(EventKind::BrkExit, 7, 5, 0x5000),
                &[],
            ))
            .unwrap();
        assert_eq!(bx.op, Op::Brk { result: 0x5000 });
    }

    #[test]
    fn a_spawn_record_is_a_creation_in_one() {
        let mut r = Resolver::default();
        let spawned = with_stack(
            Event::go_spawned(7, 5, 0xc000, 0x4444),
            StackField::Frames(2),
            0,
        );
        let got = r.feed(&encode(&spawned, &[0x100, 0x200])).unwrap();
        assert_eq!(
            got.op,
            Op::GoCreate {
                g: 0xc000,
                start_pc: 0x4444
            }
        );
        assert_eq!(
            r.stacks.frames(got.key.1),
            Some(&[0x4444, 0x100, 0x200][..])
        );
        assert_eq!(r.unpaired, 0);
    }

    #[test]
    fn goroutine_creation_pairs_and_gets_its_start_as_leaf() {
        let mut r = Resolver::default();
        let create = with_stack(Event::go_create(7, 5, 0x4444), StackField::Frames(2), 0);
        assert_eq!(r.feed(&encode(&create, &[0x100, 0x200])), None);
        let created = Event::goroutine(EventKind::GoCreated, 7, 5, 0xc000);
        let got = r.feed(&encode(&created, &[])).unwrap();
        assert_eq!(
            got.op,
            Op::GoCreate {
                g: 0xc000,
                start_pc: 0x4444
            }
        );
        assert_eq!(
            r.stacks.frames(got.key.1),
            Some(&[0x4444u64, 0x100, 0x200][..])
        );
        let hold = Event::hold(7, 5, HoldPoint::Exit, 3, true);
        assert_eq!(
            r.feed(&encode(&hold, &[])).unwrap().op,
            Op::Hold {
                point: HoldPoint::Exit,
                code: 3,
                stopped: true
            }
        );
    }
}
