//! Runs of page faults merged by the fault probe (see
//! `memtrace-ebpf/src/probes/faults.rs`): the per-thread state the kernel
//! keeps and user space reads, and the rule for what joins a run.

/// Pages one [`FaultRun`] may merge before it is sent and a new run starts
/// with a fresh stack (so a run's stack is re-read at least this often).
pub const FAULT_RUN_MAX: u64 = 512;
/// Largest gap, in bytes, between two merged pages of a run: Go's spans
/// interleave pages touched by different code (an 8 KiB span's mark bits
/// are written by the runtime, its objects by the program), so one
/// stack's pages come every other page.
pub const FAULT_RUN_MAX_STRIDE: u64 = 16 * 4096;

/// Contiguous user-mode faults of one thread at one instruction and frame,
/// merged by the fault probe into one record (`FAULT_RUNS`, per thread).
/// The first page goes out as a `Fault` with its stack; the next ones only
/// count here until the run ends: a page off its stride, another frame,
/// a release syscall anywhere (`gen`), the thread's exit, or
/// [`FAULT_RUN_MAX`] pages. User space also reads runs in progress
/// ([`crate::EventKind::FaultRunSoFar`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRun {
    pub tgid: u32,
    /// Odd while the probe rewrites the run (user space re-reads).
    pub seq: u32,
    /// Instruction, frame pointer, and the frame's saved frame pointer and
    /// return address at the first fault: what a fault must match to join.
    pub ip: u64,
    pub bp: u64,
    pub caller_bp: u64,
    pub ra: u64,
    /// The first page (sent with its stack) and the last one merged.
    pub first: u64,
    pub last: u64,
    /// Bytes between merged pages (0 until the second page).
    pub stride: u64,
    /// Pages merged after the first.
    pub count: u64,
    /// The first page's stack reference (0: the slot is empty).
    pub stack_ref: u64,
    /// When the first page faulted: the run's identity.
    pub start_ns: u64,
    /// The release generation (bumped by every release syscall of any
    /// target) the run began in; a fault in another generation ends it.
    pub gen: u64,
}

/// Runs a thread keeps at once.
pub const FAULT_RUN_SLOTS: usize = 4;

/// A thread's runs. Several, because Go interleaves streams of faults: an
/// allocation loop fills objects every other page while the runtime writes
/// the spans' mark bits on the pages between, and a growing slice of
/// pointers faults elsewhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRuns {
    pub runs: [FaultRun; FAULT_RUN_SLOTS],
    /// When each slot was last used (`clock` values): a new run replaces
    /// the one used least recently.
    pub used: [u64; FAULT_RUN_SLOTS],
    pub clock: u64,
}

impl FaultRun {
    /// Whether a fault at `page` extends this run, given the frame it
    /// faulted in: the same instruction and frame (and the frame's caller),
    /// the same release generation, and the next page along the stride.
    #[inline(always)]
    pub fn extends(&self, frame: &[u64; 4], page: u64, gen: u64) -> bool {
        if self.stack_ref == 0
            || self.count >= FAULT_RUN_MAX
            || self.gen != gen
            || self.ip != frame[0]
            || self.bp != frame[1]
            || self.caller_bp != frame[2]
            || self.ra != frame[3]
        {
            return false;
        }
        let d = page.wrapping_sub(self.last);
        if self.stride == 0 {
            d != 0 && d <= FAULT_RUN_MAX_STRIDE
        } else {
            d == self.stride
        }
    }

    /// The pages merged after the first, in order.
    pub fn pages(first: u64, stride: u64, count: u64) -> impl Iterator<Item = u64> {
        (1..=count).map(move |i| first.wrapping_add(i.wrapping_mul(stride)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventKind, StackField};

    fn run(first: u64) -> FaultRun {
        FaultRun {
            tgid: 1,
            ip: 0x40,
            bp: 0x7f00,
            caller_bp: 0x7f40,
            ra: 0x41,
            first,
            last: first,
            stack_ref: 9,
            start_ns: 5,
            gen: 3,
            ..FaultRun::default()
        }
    }

    #[test]
    fn a_run_takes_the_next_page_along_its_stride_only() {
        let frame = [0x40, 0x7f00, 0x7f40, 0x41];
        let mut r = run(0x10000);
        // The second page sets the stride; a later one must keep it.
        assert!(r.extends(&frame, 0x12000, 3));
        r.stride = 0x2000;
        r.last = 0x12000;
        r.count = 1;
        assert!(r.extends(&frame, 0x14000, 3));
        assert!(!r.extends(&frame, 0x13000, 3), "off the stride");
        assert!(!r.extends(&frame, 0x10000, 3), "backwards");
        assert!(!r.extends(&frame, 0x14000, 4), "a release came between");
        for i in 0..4 {
            let mut other = frame;
            other[i] += 8;
            assert!(!r.extends(&other, 0x14000, 3), "another frame ({i})");
        }
        r.count = FAULT_RUN_MAX;
        assert!(!r.extends(&frame, 0x14000, 3), "full");
        let mut far = run(0x10000);
        assert!(!far.extends(&frame, 0x10000 + FAULT_RUN_MAX_STRIDE + 4096, 3));
        far.stack_ref = 0;
        assert!(!far.extends(&frame, 0x11000, 3), "an empty slot");
    }

    #[test]
    fn a_run_event_lists_its_merged_pages() {
        let mut r = run(0x10000);
        (r.stride, r.count) = (0x2000, 3);
        let ev = Event::fault_run(EventKind::FaultRun, 7, &r);
        assert_eq!((ev.tgid, ev.tid, ev.stack_field()), (1, 7, StackField::Ref));
        assert_eq!((ev.stack_ref, ev.run_start_ns()), (9, 5));
        let pages: [u64; 3] = {
            let mut it = FaultRun::pages(ev.addr, ev.run_stride(), ev.size);
            [0; 3].map(|_| it.next().unwrap_or(0))
        };
        assert_eq!(pages, [0x12000, 0x14000, 0x16000]);
        assert_eq!(EventKind::from_u32(21), Some(EventKind::FaultRun));
        assert_eq!(EventKind::from_u32(22), Some(EventKind::FaultRunSoFar));
    }
}
