//! Types shared by the kernel side (`memtrace-ebpf`) and user space
//! (`memtrace-user`). Everything here is `#[repr(C)]` and `Copy` so both sides
//! read the same bytes; the layout is pinned by `const` size assertions.
#![no_std]

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A Go heap allocation: `size` bytes, one object.
    Alloc = 1,
    /// A successful `mmap`: `size` bytes mapped at `addr`.
    Mmap = 2,
    /// A `munmap` of `size` bytes at `addr`.
    Munmap = 3,
    /// A page fault at page `addr` (user mode, or kernel mode on a user
    /// address, e.g. `read()` into a fresh buffer).
    Fault = 4,
    /// `madvise(addr, size, aux)`.
    Madvise = 5,
    /// A successful `mremap`: `size` bytes at `addr` became `aux2` bytes at `aux`.
    Mremap = 6,
    /// A `brk` call: `addr` requested, `aux` the break after it.
    Brk = 7,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Alloc),
            2 => Some(Self::Mmap),
            3 => Some(Self::Munmap),
            4 => Some(Self::Fault),
            5 => Some(Self::Madvise),
            6 => Some(Self::Mremap),
            7 => Some(Self::Brk),
            _ => None,
        }
    }
}

/// One record in the `EVENTS` ring buffer.
///
/// `stack_id` indexes the `STACKS` stack-trace map; a negative value is the
/// (negated) errno of `bpf_get_stackid`, and user space reports such events
/// under an explicit "[stack unavailable]" frame instead of dropping them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub stack_id: i32,
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    /// Kind-specific extra word. `Mmap`: `prot | flags << 32`; `Madvise`:
    /// the advice; `Mremap`: the new address; `Brk`: the resulting break.
    pub aux: u64,
    /// Second extra word. `Mremap`: the new length.
    pub aux2: u64,
}

pub const EVENT_SIZE: usize = 56;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

/// Per-target settings kept in the `TARGETS` map, keyed by tgid. Presence in
/// the map is what makes a process a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetConfig {
    pub flags: u64,
}

/// Index into the `COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events lost because the ring buffer was full.
    RingbufDrops = 0,
    /// Events whose stack could not be stored (map full, hash collision, fault).
    StackErrors = 1,
    /// `mmap` exits seen without a matching enter (missed pairing).
    MmapUnpaired = 2,
    /// Allocation probe hits, including the ones filtered out by size.
    AllocHits = 3,
    /// Syscall exits (mremap, brk) without a matching enter.
    SyscallUnpaired = 4,
}

pub const COUNTER_COUNT: u32 = 5;

/// Largest number of distinct user stacks kept for one recording.
pub const STACK_MAP_ENTRIES: u32 = 32 * 1024;
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
        for k in [
            EventKind::Alloc,
            EventKind::Mmap,
            EventKind::Munmap,
            EventKind::Fault,
            EventKind::Madvise,
            EventKind::Mremap,
            EventKind::Brk,
        ] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
    }
}
