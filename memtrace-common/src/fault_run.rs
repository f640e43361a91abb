//! Runs of page faults merged by the fault probe (see
//! `memtrace-ebpf/src/probes/faults.rs`): the per-CPU state the kernel
//! keeps and user space reads, and the rule for what joins a run.

/// Pages a [`FaultRun`] (with the runs that continue it) may merge before
/// a new run starts with a fresh stack (so a stack is re-read at least this
/// often).
pub const FAULT_RUN_MAX: u64 = 512;
/// Largest gap, in bytes, between two merged pages of a run, either way:
/// Go's spans interleave pages touched by different code (an 8 KiB span's
/// mark bits are written by the runtime, its objects by the program), so
/// one stack's pages come every other page; and the runtime hands out some
/// of its own structures (span descriptors) from the top of a chunk down.
pub const FAULT_RUN_MAX_STRIDE: u64 = 16 * 4096;

/// Contiguous user-mode faults of one thread at one instruction and frame,
/// merged by the fault probe into one record (`FAULT_RUNS`, per CPU). The
/// first page goes out as a `Fault` with its stack; the next ones only
/// count here until the run ends: a page off its stride, another frame,
/// a release syscall anywhere (`gen`), the thread's exit, its slot taken
/// by a newer run, or [`FAULT_RUN_MAX`] pages. User space also reads runs
/// in progress ([`crate::EventKind::FaultRunSoFar`]).
///
/// A fault in the same frame that only breaks the stride or the release
/// generation, within [`FAULT_RUN_MAX_STRIDE`] of the last page, ends the
/// run and *continues* it ([`FaultRun::continues`]): a new run (a new
/// identity, in the new generation) under the same stack, whose `first` is
/// the old run's last page, already counted. It is as sure of its stack as
/// a run's second page is, and costs no stack walk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRun {
    pub tgid: u32,
    /// The thread whose faults the run merges.
    pub tid: u32,
    /// Odd while the probe rewrites the run (user space re-reads).
    pub seq: u32,
    pub _pad: u32,
    /// Instruction, frame pointer, and the frame key at the first fault:
    /// what a fault must match to join. The key is the frame's saved frame
    /// pointer and return address; in a function with no frame of its own
    /// it is [`FRAMELESS`] and the return address at the stack pointer
    /// (its caller, which the frame-pointer chain skips).
    pub ip: u64,
    pub bp: u64,
    pub caller_bp: u64,
    pub ra: u64,
    /// The first page (sent with its stack) and the last one merged.
    pub first: u64,
    pub last: u64,
    /// Bytes between merged pages, two's complement when the pages go
    /// down (0 until the second page).
    pub stride: u64,
    /// Pages merged after the first.
    pub count: u64,
    /// Pages merged since the stack was read: this run's and those of the
    /// runs it continues.
    pub chain: u64,
    /// The first page's stack reference (0: the slot is empty).
    pub stack_ref: u64,
    /// When the first page faulted: the run's identity.
    pub start_ns: u64,
    /// The release generation (bumped by every release syscall of any
    /// target) the run began in; a fault in another generation ends it.
    pub gen: u64,
    /// The first page's goroutine label set and its first word (see
    /// [`crate::Event::labels`]).
    pub labels: u64,
    pub labels_check: u64,
}

/// Set in a stack reference that no fingerprint stands for (its stack's
/// fingerprint is shared with other stacks, or there was none): only the
/// runs of merged faults that start with its record use it, and it is
/// forgotten when the last of them ends with a
/// [`crate::EventKind::FaultRun`].
pub const EPHEMERAL_REF: u64 = 1 << 47;

/// Whether stack reference `r` is an [`EPHEMERAL_REF`].
pub const fn is_ephemeral_ref(r: u64) -> bool {
    r & EPHEMERAL_REF != 0
}

/// Runs a CPU keeps at once (a power of two: the probe masks slot indexes).
pub const FAULT_RUN_SLOTS: usize = 8;
const _: () = assert!(FAULT_RUN_SLOTS.is_power_of_two());

/// A CPU's runs, of whichever threads fault there (a thread that moves to
/// another CPU starts new runs there; its old ones end when their slots
/// are taken, and user space reads them until then). Several, because Go
/// interleaves streams of faults: an allocation loop fills objects every
/// other page while the runtime writes the spans' mark bits on the pages
/// between, its span descriptors elsewhere, and a growing slice of
/// pointers faults elsewhere again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRuns {
    pub runs: [FaultRun; FAULT_RUN_SLOTS],
    /// When each slot was last used (`clock` values): a new run replaces
    /// the one used least recently.
    pub used: [u64; FAULT_RUN_SLOTS],
    pub clock: u64,
    /// Scratch for the probe's choice of a slot for a new run (kept in the
    /// map, where the verifier does not track each candidate index).
    pub victim: u64,
    pub victim_key: u64,
    /// Scratch: the slot of the most recently used run of the faulting
    /// thread's frame (instruction and frame pointer), if any
    /// ([`FAULT_RUN_SLOTS`]: none), and when it was used.
    pub cand: u64,
    pub cand_used: u64,
}

/// The first key word of a run in a function that has no frame of its own
/// (a frameless leaf such as `runtime.memmove`, or a function before it
/// pushes its frame pointer): its key is the return address at the stack
/// pointer (the direct caller's line, which the frame-pointer chain
/// skips), not the frame pointer's saved caller. No saved frame pointer of
/// a user stack has this value.
pub const FRAMELESS: u64 = u64::MAX;

/// How far below the faulting instruction the target of the call before a
/// frameless function's return address may be (a frameless function makes
/// no calls, so it is small; Go's `memmove` is under 2 KiB).
pub const FRAMELESS_REACH: u64 = 64 << 10;

/// Whether the word at the stack pointer, `ra`, is the return address of a
/// direct call (`E8 rel32`, the five bytes `code` before `ra`) of the
/// function holding `ip`: the faulting function has no frame of its own,
/// so `ra` is its caller. The call's target must lie at most
/// [`FRAMELESS_REACH`] below `ip`. A framed function's stack pointer holds
/// its own locals; one of them passing for such a return address would
/// have to be a code address just past a call into the faulting function.
#[inline(always)]
pub fn called_from(code: [u8; 5], ra: u64, ip: u64) -> bool {
    if code[0] != 0xe8 {
        return false;
    }
    let rel = i32::from_le_bytes([code[1], code[2], code[3], code[4]]);
    let target = ra.wrapping_add(rel as i64 as u64);
    target <= ip && ip - target < FRAMELESS_REACH
}

impl FaultRun {
    /// Whether a fault of thread `tid` at `page` extends this run, given
    /// the frame it faulted in: the same thread, instruction and frame (and
    /// the frame's caller), the same release generation, and the next page
    /// along the stride (which the second page sets, up or down).
    #[inline(always)]
    pub fn extends(&self, tid: u32, frame: &[u64; 4], page: u64, gen: u64) -> bool {
        if !self.same_frame(tid, frame) || self.chain >= FAULT_RUN_MAX || self.gen != gen {
            return false;
        }
        let d = page.wrapping_sub(self.last);
        if self.stride == 0 {
            d != 0 && (d as i64).unsigned_abs() <= FAULT_RUN_MAX_STRIDE
        } else {
            d == self.stride
        }
    }

    /// Whether this slot holds a run of thread `tid` in `frame` (the same
    /// instruction, frame pointer, caller's frame and return address).
    #[inline(always)]
    pub fn same_frame(&self, tid: u32, frame: &[u64; 4]) -> bool {
        self.stack_ref != 0
            && self.tid == tid
            && self.ip == frame[0]
            && self.bp == frame[1]
            && self.caller_bp == frame[2]
            && self.ra == frame[3]
    }

    /// Whether a fault at `page` in this run's frame that does not extend
    /// it continues it in a new run: another page within
    /// [`FAULT_RUN_MAX_STRIDE`] of the last, before the chain's stack is
    /// due to be read again.
    #[inline(always)]
    pub fn continues(&self, page: u64) -> bool {
        let d = page.wrapping_sub(self.last);
        d != 0 && (d as i64).unsigned_abs() <= FAULT_RUN_MAX_STRIDE && self.chain < FAULT_RUN_MAX
    }

    /// The pages merged after the first, in order (`stride` wraps: a run
    /// going down has a two's-complement stride).
    pub fn pages(first: u64, stride: u64, count: u64) -> impl Iterator<Item = u64> {
        (1..=count).map(move |i| first.wrapping_add(i.wrapping_mul(stride)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventKind, StackField};

    /// `E8 rel32` at `at`, returning to `at + 5`, calling `target`.
    fn call(at: u64, target: u64) -> [u8; 5] {
        let rel = (target.wrapping_sub(at + 5) as i64) as i32;
        let r = rel.to_le_bytes();
        [0xe8, r[0], r[1], r[2], r[3]]
    }

    #[test]
    fn a_return_address_after_a_call_into_the_function_names_its_caller() {
        let memmove = 0x46_0000;
        let site = 0x49_a1c1;
        let code = call(site, memmove);
        // Faulting 0x1c0 bytes into the callee: called from `site`.
        assert!(called_from(code, site + 5, memmove + 0x1c0));
        assert!(called_from(code, site + 5, memmove), "at its first byte");
        // Calls reaching back up, to elsewhere, or not a call at all.
        assert!(
            !called_from(code, site + 5, memmove - 1),
            "ip below the target"
        );
        assert!(!called_from(code, site + 5, memmove + FRAMELESS_REACH));
        let mut not_call = code;
        not_call[0] = 0xe9; // JMP rel32
        assert!(!called_from(not_call, site + 5, memmove + 0x10));
        // A call forwards (the target above the call site).
        let fwd = call(0x40_0000, 0x50_0000);
        assert!(called_from(fwd, 0x40_0005, 0x50_0040));
    }

    fn run(first: u64) -> FaultRun {
        FaultRun {
            tgid: 1,
            tid: 7,
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
        assert!(r.extends(7, &frame, 0x12000, 3));
        assert!(!r.extends(8, &frame, 0x12000, 3), "another thread");
        r.stride = 0x2000;
        r.last = 0x12000;
        r.count = 1;
        assert!(r.extends(7, &frame, 0x14000, 3));
        assert!(!r.extends(7, &frame, 0x13000, 3), "off the stride");
        assert!(!r.extends(7, &frame, 0x10000, 3), "backwards");
        assert!(!r.extends(7, &frame, 0x14000, 4), "a release came between");
        for i in 0..4 {
            let mut other = frame;
            other[i] += 8;
            assert!(!r.extends(7, &other, 0x14000, 3), "another frame ({i})");
        }
        r.chain = FAULT_RUN_MAX;
        assert!(!r.extends(7, &frame, 0x14000, 3), "full");
        let mut far = run(0x10000);
        let gap = FAULT_RUN_MAX_STRIDE + 4096;
        assert!(!far.extends(7, &frame, 0x10000 + gap, 3));
        assert!(!far.extends(7, &frame, 0x10000 + (1 << 20) - gap, 3));
        far.stack_ref = 0;
        assert!(!far.extends(7, &frame, 0x11000, 3), "an empty slot");
    }

    #[test]
    fn a_fault_in_the_same_frame_nearby_continues_a_run() {
        let frame = [0x40, 0x7f00, 0x7f40, 0x41];
        let mut r = run(0x10000);
        (r.stride, r.last, r.count, r.chain) = (0x2000, 0x14000, 2, 2);
        assert!(r.same_frame(7, &frame) && !r.same_frame(8, &frame));
        // Off the stride, or in a later generation: continued.
        assert!(!r.extends(7, &frame, 0x15000, 3) && r.continues(0x15000));
        assert!(!r.extends(7, &frame, 0x16000, 4) && r.continues(0x16000));
        assert!(r.continues(0x14000 - FAULT_RUN_MAX_STRIDE));
        // The same page, a far one, or a chain due for a fresh stack: not.
        assert!(!r.continues(0x14000));
        assert!(!r.continues(0x14000 + FAULT_RUN_MAX_STRIDE + 4096));
        r.chain = FAULT_RUN_MAX;
        assert!(!r.continues(0x15000));
        r.stack_ref = 0;
        assert!(!r.same_frame(7, &frame), "an empty slot");
    }

    #[test]
    fn a_run_may_go_down() {
        let frame = [0x40, 0x7f00, 0x7f40, 0x41];
        let mut r = run(0x20000);
        assert!(r.extends(7, &frame, 0x1f000, 3));
        r.stride = 0x1f000u64.wrapping_sub(0x20000);
        r.last = 0x1f000;
        r.count = 1;
        assert!(r.extends(7, &frame, 0x1e000, 3));
        assert!(!r.extends(7, &frame, 0x20000, 3), "turning back");
        r.last = 0x1e000;
        r.count = 2;
        let mut pages = FaultRun::pages(r.first, r.stride, r.count);
        assert_eq!(pages.next(), Some(0x1f000));
        assert_eq!(pages.next(), Some(0x1e000));
        assert_eq!(pages.next(), None);
    }

    #[test]
    fn a_run_event_lists_its_merged_pages() {
        let mut r = run(0x10000);
        (r.stride, r.count) = (0x2000, 3);
        let ev = Event::fault_run(EventKind::FaultRun, &r);
        assert_eq!((ev.tgid, ev.tid, ev.stack_field()), (1, 7, StackField::Ref));
        assert_eq!((ev.stack_ref, ev.run_start_ns()), (9, 5));
        let pages: [u64; 3] = {
            let mut it = FaultRun::pages(ev.addr, ev.run_stride(), ev.size);
            [0; 3].map(|_| it.next().unwrap_or(0))
        };
        assert_eq!(pages, [0x12000, 0x14000, 0x16000]);
        assert_eq!(EventKind::from_u32(21), Some(EventKind::FaultRun));
        assert_eq!(EventKind::from_u32(22), Some(EventKind::FaultRunSoFar));
        assert_eq!(EventKind::from_u32(23), Some(EventKind::FaultRunContinued));
        assert!(crate::is_ephemeral_ref(crate::EPHEMERAL_REF | 1 << 48 | 5));
        assert!(!crate::is_ephemeral_ref(1 << 48 | 5));
    }
}
