//! Types shared by the kernel side (`memtrace-ebpf`) and user space
//! (`memtrace-user`). Everything here is `#[repr(C)]` and `Copy` so both sides
//! read the same bytes; the layout is pinned by `const` size assertions.
//!
//! A ring-buffer record is an [`Event`] followed, when `stack > 0`, by that
//! many user-stack frames (u64 instruction pointers, leaf first).
#![no_std]

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A Go heap allocation: `size` bytes, one object.
    Alloc = 1,
    /// `mmap` entered: `size` bytes, `aux` = `prot | flags << 32`.
    MmapEnter = 2,
    /// `mmap` returned `addr` (errors are not reported).
    MmapExit = 3,
    /// A `munmap` of `size` bytes at `addr`.
    Munmap = 4,
    /// A page fault at page `addr` (user mode, or kernel mode on a user
    /// address, e.g. `read()` into a fresh buffer).
    Fault = 5,
    /// `madvise(addr, size, aux)`.
    Madvise = 6,
    /// `mremap` entered: `size` bytes at `addr` to become `aux2` bytes.
    MremapEnter = 7,
    /// `mremap` returned `addr`.
    MremapExit = 8,
    /// `brk` entered.
    BrkEnter = 9,
    /// `brk` returned the break `addr`.
    BrkExit = 10,
    /// `runtime.newproc1` entered (the `go` statement's stack), `aux` = the
    /// new goroutine's start PC.
    GoCreate = 11,
    /// `runtime.newproc1` returned the new goroutine `addr` (its `*g`).
    GoCreated = 12,
    /// `runtime.goexit0` for the goroutine `addr` (its `*g`).
    GoExit = 13,
    /// A GC cycle's mark termination: `addr` = heap live bytes, `size` = the
    /// cycle's heap goal (0 when the runtime's layout is unknown).
    GcCycle = 14,
    /// The world is being stopped.
    StwStop = 15,
    /// The world is being restarted.
    StwStart = 16,
    /// A process (`tgid`) executed a new program (agent discovery; sent for
    /// every process, not only targets).
    ProcExec = 17,
    /// A target process's last thread exited.
    ProcExit = 18,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Alloc,
            2 => Self::MmapEnter,
            3 => Self::MmapExit,
            4 => Self::Munmap,
            5 => Self::Fault,
            6 => Self::Madvise,
            7 => Self::MremapEnter,
            8 => Self::MremapExit,
            9 => Self::BrkEnter,
            10 => Self::BrkExit,
            11 => Self::GoCreate,
            12 => Self::GoCreated,
            13 => Self::GoExit,
            14 => Self::GcCycle,
            15 => Self::StwStop,
            16 => Self::StwStart,
            17 => Self::ProcExec,
            18 => Self::ProcExit,
            _ => return None,
        })
    }
}

/// `Event::stack`: the event carries no stack (syscall exits).
pub const STACK_NONE: i32 = -100_000;
/// `Event::stack`: the stack is the one an earlier record defined under
/// `stack_ref` (the kernel matched the top of the stack and skipped the walk).
pub const STACK_REF: i32 = 0;

/// One record header in the `EVENTS` ring buffer.
///
/// `stack` > 0 is the number of frames that follow (and, if `stack_ref` is
/// not 0, defines that reference for later records); [`STACK_REF`] and
/// [`STACK_NONE`] are described above; any other negative value is the
/// negated errno of `bpf_get_stack`, which user space shows as a named
/// "[stack unavailable]" frame instead of dropping the event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub stack: i32,
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    /// Kind-specific extra word (see [`EventKind`]).
    pub aux: u64,
    /// Second extra word (see [`EventKind`]).
    pub aux2: u64,
    /// Stack reference defined or used by this record (0: none).
    pub stack_ref: u64,
}

pub const EVENT_SIZE: usize = 64;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

/// Deepest user stack captured, in frames.
pub const MAX_FRAMES: usize = 127;
/// Largest record: a header and a full stack.
pub const MAX_RECORD: usize = EVENT_SIZE + 8 * MAX_FRAMES;

/// Per-target settings kept in the `TARGETS` map, keyed by tgid. Presence in
/// the map is what makes a process a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    /// Runtime addresses of `gcController.heapLive` and
    /// `gcController.gcPercentHeapGoal` (0: unknown).
    pub heap_live: u64,
    pub heap_goal: u64,
}

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events lost because the ring buffer was full.
    RingbufDrops = 0,
    /// Stacks that could not be captured.
    StackErrors = 1,
    /// Stack walks skipped because the top of the stack matched a known one.
    StackReuses = 2,
    /// Allocation probe hits, including the ones filtered out by size.
    AllocHits = 3,
}

pub const COUNTER_COUNT: u32 = 4;

/// A known stack is walked again after this many reuses, bounding how long
/// a fingerprint match can stand in for a walk.
pub const REWALK_EVERY: u64 = 256;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const RINGBUF_BYTES: u32 = 16 * 1024 * 1024;
/// Once this many bytes wait in the ring buffer, producers wake the reader;
/// below it they submit with `BPF_RB_NO_WAKEUP` and the reader polls on a timer.
pub const RINGBUF_WAKE_BYTES: u64 = (RINGBUF_BYTES / 8) as u64;
/// Maximum number of target processes.
pub const MAX_TARGETS: u32 = 1024;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_round_trips() {
        for v in 1..=18 {
            assert_eq!(EventKind::from_u32(v).map(|k| k as u32), Some(v));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(19), None);
    }
}
