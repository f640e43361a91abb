//! Ring-buffer records to resolved operations.
//!
//! A record is an [`Event`] header plus, when its stack field says so, the
//! frames. The [`Resolver`] interns stacks (so a stack is stored once,
//! whatever the number of events), resolves stack references to the stacks
//! that defined them, and pairs syscall enters (which carry the stack and
//! arguments) with their exits (which carry the result).

use std::collections::HashMap;

use memtrace_common::label_capture::{CAPTURED_LABEL_SIZE, CAPTURE_LABELS};
use memtrace_common::{CapturedLabel, Event, EventKind, HoldPoint, StackField, EVENT_SIZE};

use crate::model::stack::{Stack, StackKey, StackTable};

/// A run of faults the kernel merged (see `memtrace_common::FaultRun`): the
/// pages after `first` at `stride` steps, `count` of them so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub tid: u32,
    pub first: u64,
    pub stride: u64,
    pub count: u64,
    pub start_ns: u64,
    /// The run ended (its last word), or was read in progress.
    pub ended: bool,
}

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
    /// The OOM killer chose the process: its RSS by kind at the kill, KiB.
    OomVictim {
        anon_kb: u64,
        file_kb: u64,
        shmem_kb: u64,
    },
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
    /// Its goroutine's pprof label set, a pointer in the target (0: none),
    /// and the set's first word when the event happened.
    pub labels: (u64, u64),
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
    /// A captured label set says it holds more labels than are captured.
    #[error("captured label set of {0} labels")]
    LabelCount(u64),
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

/// A label set the probes copied: its process, address,
/// generation and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedSet {
    pub pid: u32,
    pub ptr: u64,
    pub gen: u64,
    pub labels: Vec<CapturedLabel>,
}

/// The captured set in a [`EventKind::LabelSet`] record; `None` for any
/// other record. A record shorter than its label count says is an error.
pub fn label_set(bytes: &[u8]) -> Option<Result<CapturedSet, DecodeError>> {
    if bytes.len() < EVENT_SIZE {
        return None;
    }
    // SAFETY: length checked; Event is plain old data, read unaligned.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if EventKind::from_u32(ev.kind) != Some(EventKind::LabelSet) {
        return None;
    }
    let (ptr, gen, n) = ev.label_set_fields();
    if n > CAPTURE_LABELS as u64 {
        return Some(Err(DecodeError::LabelCount(n)));
    }
    let n = n as usize;
    let want = EVENT_SIZE + n * CAPTURED_LABEL_SIZE;
    if bytes.len() < want {
        return Some(Err(DecodeError::Short {
            got: bytes.len(),
            want,
        }));
    }
    let labels = bytes[EVENT_SIZE..want]
        .chunks_exact(CAPTURED_LABEL_SIZE)
        // SAFETY: each chunk is a whole CapturedLabel (plain old data).
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<CapturedLabel>()) })
        .collect();
    Some(Ok(CapturedSet {
        pid: ev.tgid,
        ptr,
        gen,
        labels,
    }))
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
    /// Events whose stack walk failed, by errno.
    pub stack_errors: std::collections::BTreeMap<u32, u64>,
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
            StackField::Error(errno) => {
                *self.stack_errors.entry(errno).or_default() += 1;
                Stack::Failed(errno)
            }
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
            EventKind::OomVictim => {
                let (anon_kb, file_kb, shmem_kb) = ev.oom_rss_kb();
                Op::OomVictim {
                    anon_kb,
                    file_kb,
                    shmem_kb,
                }
            }
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
            // Taken by the label reader before the resolver (see
            // [`label_set`]); nothing to attribute.
            EventKind::LabelSet => return None,
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
                    labels: (ev.labels, ev.labels_check),
                });
            }
        };
        Some(Resolved {
            key,
            op,
            ts: ev.ts_ns,
            labels: (ev.labels, ev.labels_check),
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
        // The enter's labels: the exit is the same goroutine's.
        Some(Resolved {
            key,
            op,
            ts: ev.ts_ns,
            labels: (e.labels, e.labels_check),
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
#[path = "decode_tests.rs"]
mod tests;
