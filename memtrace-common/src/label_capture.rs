//! pprof label sets copied while they are alive: the first event under a
//! set (in a GC cycle of its process) copies it into a
//! [`LabelSetRecordOf`] and gives it a generation; events then carry the
//! set's address and that generation ([`captured_check`]) instead of a
//! fingerprint. A generation is unique
//! (the CPU in its top bits), so an event can never be matched with
//! another set that later took the same address.

use crate::Event;

/// Labels a set may hold to be copied (pprof's are a handful); a larger
/// set is read from the target's memory instead.
pub const CAPTURE_LABELS: usize = 8;
/// Bytes of a key copied at most; a longer key is cut (and marked so).
pub const CAPTURE_KEY: usize = 64;
/// Bytes of a value copied at most; a longer value is cut.
pub const CAPTURE_VALUE: usize = 128;

/// One label as copied: its full lengths in the target and the first
/// bytes of each string.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedLabel {
    pub key_len: u32,
    pub value_len: u32,
    pub key: [u8; CAPTURE_KEY],
    pub value: [u8; CAPTURE_VALUE],
}

pub const CAPTURED_LABEL_SIZE: usize = 8 + CAPTURE_KEY + CAPTURE_VALUE;
const _: () = assert!(core::mem::size_of::<CapturedLabel>() == CAPTURED_LABEL_SIZE);

/// A copied set as sent: a [`crate::EventKind::LabelSet`] header, then
/// room for `N` labels (2, or [`CAPTURE_LABELS`]), of which the header
/// says how many are filled.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LabelSetRecordOf<const N: usize> {
    pub ev: Event,
    pub labels: [CapturedLabel; N],
}

/// How a target lays out its label sets, for the probes
/// ([`crate::LabelOffsets::format`]).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetLayout {
    /// Not captured.
    None = 0,
    /// `map[string]string` behind a pointer (Go 1.19–1.23).
    Map = 1,
    /// A slice of `{key, value string}` (Go 1.24 and later).
    Slice = 2,
}

/// Set in an event's `labels_check` when it holds a capture generation
/// rather than a fingerprint ([`crate::labels_check`] never sets it).
pub const CAPTURED: u64 = 1 << 63;

/// The `labels_check` of an event under the captured set of generation
/// `gen`.
pub const fn captured_check(gen: u64) -> u64 {
    gen | CAPTURED
}

/// The capture generation an event's `labels_check` holds, if it holds one.
pub const fn captured_gen(check: u64) -> Option<u64> {
    if check & CAPTURED != 0 {
        Some(check & !CAPTURED)
    } else {
        None
    }
}

/// A Go `map[string]string` (before swiss maps) the probes reads:
/// `hmap`'s `count` (0), `B` (9), `buckets` (16) and `oldbuckets` (24);
/// a bucket's 8 tophash bytes, then 8 keys and 8 values (16 bytes each).
/// Only a map of one bucket (`B` 0, at most 8 labels) is captured.
pub mod hmap {
    pub const B: u64 = 9;
    pub const BUCKETS: u64 = 16;
    pub const OLD_BUCKETS: u64 = 24;
    pub const KEYS: u64 = 8;
    pub const VALUES: u64 = 8 + 8 * 16;
    /// Tophash values below this mark an empty or evacuated slot.
    pub const MIN_TOPHASH: u8 = 5;
}

impl Event {
    /// A label set captured at `ptr` under generation `gen`, with `n`
    /// labels following the header.
    pub const fn label_set(tgid: u32, tid: u32, ptr: u64, gen: u64, n: u32) -> Self {
        Self::new(crate::EventKind::LabelSet, tgid, tid).with(ptr, gen, n as u64, 0)
    }

    /// Makes `self` what [`Event::label_set`] returns, field by field, in
    /// place (the probes write it into the ring buffer; a whole event
    /// built on the BPF stack did not fit beside their own frames).
    #[inline(always)]
    pub fn write_label_set(&mut self, tgid: u32, tid: u32, ptr: u64, gen: u64, n: u32) {
        self.kind = crate::EventKind::LabelSet as u32;
        self.tgid = tgid;
        self.tid = tid;
        self.stack = crate::STACK_NONE;
        self.ts_ns = 0;
        self.addr = ptr;
        self.size = gen;
        self.arg = n as u64;
        self.arg2 = 0;
        self.stack_ref = 0;
        self.labels = 0;
        self.labels_check = 0;
    }

    /// A [`crate::EventKind::LabelSet`]'s set address, generation and
    /// label count.
    pub const fn label_set_fields(&self) -> (u64, u64, u64) {
        (self.addr, self.size, self.arg)
    }
}
