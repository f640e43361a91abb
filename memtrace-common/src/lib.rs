//! Types shared by the kernel side (`memtrace-ebpf`) and user space
//! (`memtrace-user`). Everything here is `#[repr(C)]` and `Copy` so both sides
//! read the same bytes; the layout is pinned by `const` size assertions.
//!
//! A ring-buffer record is an [`Event`] followed, when its stack field says
//! so ([`StackField::Frames`]), by that many user-stack frames (u64
//! instruction pointers, leaf first). Probes build events with the
//! constructors below, which say what each word of the body holds; user
//! space reads them back with the matching accessors.
#![no_std]

/// What an [`Event`] reports. The constructor of the same name documents
/// the body words.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A Go heap allocation: `size` bytes, one object.
    Alloc = 1,
    /// `mmap` entered: `size` bytes with protection and flags.
    MmapEnter = 2,
    /// `mmap` returned `addr` (errors are not reported).
    MmapExit = 3,
    /// A `munmap` of `size` bytes at `addr`.
    Munmap = 4,
    /// A page fault at page `addr` (user mode, or kernel mode on a user
    /// address, e.g. `read()` into a fresh buffer).
    Fault = 5,
    /// `madvise(addr, size, advice)`.
    Madvise = 6,
    /// `mremap` entered: `size` bytes at `addr` to become `new_len` bytes.
    MremapEnter = 7,
    /// `mremap` returned `addr`.
    MremapExit = 8,
    /// `brk` entered.
    BrkEnter = 9,
    /// `brk` returned the break `addr`.
    BrkExit = 10,
    /// `runtime.newproc1` entered (the `go` statement's stack), with the new
    /// goroutine's start PC.
    GoCreate = 11,
    /// `runtime.newproc1` returned the new goroutine `addr` (its `*g`).
    GoCreated = 12,
    /// `runtime.goexit0` for the goroutine `addr` (its `*g`).
    GoExit = 13,
    /// A GC cycle's mark termination, with the heap's size, goal, and the
    /// bytes the previous cycle marked live (0 when the runtime's layout is
    /// unknown).
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
    /// The target stopped itself (SIGSTOP) at a [`HoldPoint`] so user space
    /// can read or set its state; user space continues it (SIGCONT).
    Hold = 19,
    /// `runtime.newproc1` returned the new goroutine `addr`, starting at
    /// `arg` (read from the new `g`), with the `go` statement's stack: one
    /// record for what `GoCreate` + `GoCreated` say in two.
    GoSpawned = 20,
    /// User-mode faults merged in the kernel into a [`FaultRun`]: `size`
    /// pages after the run's first (which went out as a `Fault` with the
    /// stack), at `addr + i * arg` for `i` in 1..=`size`; `arg2` is the
    /// run's start time (its identity within the thread). Sent when the
    /// run ends; the count is cumulative.
    FaultRun = 21,
    /// What a [`FaultRun`] still in the kernel's map holds so far, read by
    /// user space (never sent by the probes). Same fields as `FaultRun`.
    FaultRunSoFar = 22,
    /// A [`FaultRun`] that ended because another continues it under the
    /// same stack reference (see `FaultRun::continues`). Same fields.
    FaultRunContinued = 23,
    /// `oom:mark_victim`: the OOM killer chose the target `tgid` (`tid` is
    /// the thread that ran the killer, maybe another process's). Its
    /// anonymous, file and shmem RSS at the kill, in KiB, are in `addr`,
    /// `size` and `arg`.
    OomVictim = 24,
    /// A label set captured where a goroutine's labels were set: its
    /// address, generation and label count (see [`label_capture`]),
    /// followed by the labels.
    LabelSet = 25,
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
            19 => Self::Hold,
            20 => Self::GoSpawned,
            21 => Self::FaultRun,
            22 => Self::FaultRunSoFar,
            23 => Self::FaultRunContinued,
            24 => Self::OomVictim,
            25 => Self::LabelSet,
            _ => return None,
        })
    }
}

/// Where a target holds itself for user space (the attach cookie of the
/// `go_hold` probe).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldPoint {
    /// `runtime.gcenable`: the runtime is initialized (and has set its
    /// `MemProfileRate`), no user package has run its `init` yet.
    Start = 1,
    /// `runtime.exit`: every normal exit (`main` returning, `os.Exit`, a
    /// fatal panic). The exit code travels in `size`.
    Exit = 2,
    /// `runtime.dieFromSignal`: a fatal signal with the default action
    /// (SIGTERM, SIGINT without a handler). The signal travels in `size`.
    Signal = 3,
}

impl HoldPoint {
    pub const fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Start,
            2 => Self::Exit,
            3 => Self::Signal,
            _ => return None,
        })
    }
}

/// The wire value of [`Event::stack`] for an event without a stack
/// (syscall exits).
pub const STACK_NONE: i32 = -100_000;
/// The wire value of [`Event::stack`] for "the stack is the one an earlier
/// record defined under `stack_ref`" (the kernel matched the top of the
/// stack and skipped the walk).
pub const STACK_REF: i32 = 0;

/// What [`Event::stack`] says, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackField {
    /// This many frames follow the header (and, if `stack_ref` is not 0,
    /// they define that reference for later records).
    Frames(u32),
    /// The stack an earlier record defined under `stack_ref`.
    Ref,
    /// The event carries no stack.
    None,
    /// The kernel could not capture the stack: `bpf_get_stack`'s errno.
    Error(u32),
}

impl StackField {
    /// The wire value.
    pub const fn encode(self) -> i32 {
        match self {
            Self::Frames(n) => n as i32,
            Self::Ref => STACK_REF,
            Self::None => STACK_NONE,
            Self::Error(errno) => -(errno as i32),
        }
    }

    pub const fn decode(v: i32) -> Self {
        match v {
            STACK_REF => Self::Ref,
            STACK_NONE => Self::None,
            n if n > 0 => Self::Frames(n as u32),
            e => Self::Error(e.unsigned_abs()),
        }
    }
}

/// Whether an allocation's type holds pointers (`_type.PtrBytes != 0`):
/// the runtime gives small pointer-free objects to the tiny allocator and,
/// from Go 1.22, a malloc header to pointerful ones over 512 bytes.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocType {
    /// No type (raw memory) or a type without pointers.
    NoScan = 0,
    Scan = 1,
    /// The type descriptor could not be read.
    Unknown = 2,
}

/// One record header in the `EVENTS` ring buffer.
///
/// The body words (`addr`, `size`, `arg`, `arg2`) mean what the
/// constructor of the event's kind says; read them with the accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// A [`StackField`], encoded.
    pub stack: i32,
    pub ts_ns: u64,
    pub addr: u64,
    pub size: u64,
    arg: u64,
    arg2: u64,
    /// Stack reference defined or used by this record (0: none).
    pub stack_ref: u64,
    /// The goroutine's pprof label set (`g.labels`, a pointer in the
    /// target) when the event happened; 0: none, or not read (the target
    /// cannot set labels, or the event has no goroutine).
    pub labels: u64,
    /// A fingerprint of the set then ([`labels_check`]), so that user
    /// space, reading the set later, can tell it from another set the
    /// address was reused for.
    pub labels_check: u64,
}

pub const EVENT_SIZE: usize = 80;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

impl Event {
    /// A header-only event of `kind`; the constructors fill the body.
    pub const fn new(kind: EventKind, tgid: u32, tid: u32) -> Self {
        Self {
            kind: kind as u32,
            tgid,
            tid,
            stack: STACK_NONE,
            ts_ns: 0,
            addr: 0,
            size: 0,
            arg: 0,
            arg2: 0,
            stack_ref: 0,
            labels: 0,
            labels_check: 0,
        }
    }

    /// The event with the goroutine's label set pointer and its first word.
    pub const fn with_labels(mut self, (labels, check): (u64, u64)) -> Self {
        self.labels = labels;
        self.labels_check = check;
        self
    }

    const fn with(mut self, addr: u64, size: u64, arg: u64, arg2: u64) -> Self {
        self.addr = addr;
        self.size = size;
        self.arg = arg;
        self.arg2 = arg2;
        self
    }

    /// A heap allocation of `size` bytes; `class` is what its type says
    /// of how the runtime places it ([`AllocType`]).
    pub const fn alloc(tgid: u32, tid: u32, size: u64, class: AllocType) -> Self {
        Self::new(EventKind::Alloc, tgid, tid).with(0, size, class as u64, 0)
    }

    /// An allocation's [`AllocType`].
    pub const fn alloc_type(&self) -> AllocType {
        match self.arg {
            0 => AllocType::NoScan,
            1 => AllocType::Scan,
            _ => AllocType::Unknown,
        }
    }

    /// `mmap(_, len, prot, flags, ..)` entered.
    pub const fn mmap_enter(tgid: u32, tid: u32, len: u64, prot: u32, flags: u32) -> Self {
        Self::new(EventKind::MmapEnter, tgid, tid).with(0, len, prot as u64, flags as u64)
    }

    /// A syscall exit (`kind` one of the `*Exit` kinds) that returned `ret`.
    pub const fn syscall_exit(kind: EventKind, tgid: u32, tid: u32, ret: u64) -> Self {
        Self::new(kind, tgid, tid).with(ret, 0, 0, 0)
    }

    /// `munmap(addr, len)`.
    pub const fn munmap(tgid: u32, tid: u32, addr: u64, len: u64) -> Self {
        Self::new(EventKind::Munmap, tgid, tid).with(addr, len, 0, 0)
    }

    /// A fault on the page at `page`.
    pub const fn fault(tgid: u32, tid: u32, page: u64, len: u64) -> Self {
        Self::new(EventKind::Fault, tgid, tid).with(page, len, 0, 0)
    }

    /// A run of faults: the pages after its first (see
    /// [`EventKind::FaultRun`]), with the first page's stack reference.
    pub const fn fault_run(kind: EventKind, run: &FaultRun) -> Self {
        let mut ev =
            Self::new(kind, run.tgid, run.tid).with(run.first, run.count, run.stride, run.start_ns);
        ev.stack = STACK_REF;
        ev.stack_ref = run.stack_ref;
        ev.labels = run.labels;
        ev.labels_check = run.labels_check;
        ev
    }

    /// A [`EventKind::FaultRun`]'s stride in bytes.
    pub const fn run_stride(&self) -> u64 {
        self.arg
    }

    /// A [`EventKind::FaultRun`]'s start time.
    pub const fn run_start_ns(&self) -> u64 {
        self.arg2
    }

    /// `madvise(addr, len, advice)`.
    pub const fn madvise(tgid: u32, tid: u32, addr: u64, len: u64, advice: u32) -> Self {
        Self::new(EventKind::Madvise, tgid, tid).with(addr, len, advice as u64, 0)
    }

    /// `mremap(addr, old_len, new_len, ..)` entered.
    pub const fn mremap_enter(tgid: u32, tid: u32, addr: u64, old_len: u64, new_len: u64) -> Self {
        Self::new(EventKind::MremapEnter, tgid, tid).with(addr, old_len, new_len, 0)
    }

    /// `brk(addr)` entered.
    pub const fn brk_enter(tgid: u32, tid: u32, addr: u64) -> Self {
        Self::new(EventKind::BrkEnter, tgid, tid).with(addr, 0, 0, 0)
    }

    /// A `go` statement whose goroutine starts at `start_pc`.
    pub const fn go_create(tgid: u32, tid: u32, start_pc: u64) -> Self {
        Self::new(EventKind::GoCreate, tgid, tid).with(0, 0, start_pc, 0)
    }

    /// A new goroutine `g` starting at `start_pc` (`GoSpawned`).
    pub const fn go_spawned(tgid: u32, tid: u32, g: u64, start_pc: u64) -> Self {
        Self::new(EventKind::GoSpawned, tgid, tid).with(g, 0, start_pc, 0)
    }

    /// An event about the goroutine `g` (`GoCreated`, `GoExit`).
    pub const fn goroutine(kind: EventKind, tgid: u32, tid: u32, g: u64) -> Self {
        Self::new(kind, tgid, tid).with(g, 0, 0, 0)
    }

    /// A GC cycle's mark termination.
    pub const fn gc_cycle(
        tgid: u32,
        tid: u32,
        heap_live: u64,
        heap_goal: u64,
        heap_marked: u64,
    ) -> Self {
        Self::new(EventKind::GcCycle, tgid, tid).with(0, heap_marked, heap_live, heap_goal)
    }

    /// The target holds itself at `point`; `code` is the exit code or the
    /// signal number where the point has one; `stopped` says whether the
    /// stop signal was sent (if not, user space must not wait for it).
    pub const fn hold(tgid: u32, tid: u32, point: HoldPoint, code: u64, stopped: bool) -> Self {
        Self::new(EventKind::Hold, tgid, tid).with(0, code, point as u64, stopped as u64)
    }

    /// The OOM killer chose `victim`: its RSS by kind, in KiB.
    pub const fn oom_victim(
        victim: u32,
        killer_tid: u32,
        anon_kb: u64,
        file_kb: u64,
        shmem_kb: u64,
    ) -> Self {
        Self::new(EventKind::OomVictim, victim, killer_tid).with(anon_kb, file_kb, shmem_kb, 0)
    }

    /// An OOM victim's (anonymous, file, shmem) RSS, in KiB.
    pub const fn oom_rss_kb(&self) -> (u64, u64, u64) {
        (self.addr, self.size, self.arg)
    }

    /// `mmap`'s protection bits.
    pub const fn prot(&self) -> u32 {
        self.arg as u32
    }

    /// `mmap`'s flags.
    pub const fn map_flags(&self) -> u32 {
        self.arg2 as u32
    }

    /// `madvise`'s advice.
    pub const fn advice(&self) -> u32 {
        self.arg as u32
    }

    /// `mremap`'s new length.
    pub const fn new_len(&self) -> u64 {
        self.arg
    }

    /// A new goroutine's start PC.
    pub const fn start_pc(&self) -> u64 {
        self.arg
    }

    /// The heap's size and goal at a GC cycle.
    pub const fn heap(&self) -> (u64, u64) {
        (self.arg, self.arg2)
    }

    /// The bytes the previous GC cycle marked live.
    pub const fn heap_marked(&self) -> u64 {
        self.size
    }

    /// Where a target holds itself.
    pub const fn hold_point(&self) -> Option<HoldPoint> {
        HoldPoint::from_u64(self.arg)
    }

    /// Whether a hold's stop signal was sent.
    pub const fn hold_stopped(&self) -> bool {
        self.arg2 != 0
    }

    /// The stack field, decoded.
    pub const fn stack_field(&self) -> StackField {
        StackField::decode(self.stack)
    }
}

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
    /// Runtime address of `gcController.heapMarked` (0: unknown).
    pub heap_marked: u64,
    /// Whether the target may hold itself at the `go_hold` probes (1) or
    /// not (0).
    pub hold: u64,
    /// How to read the current goroutine's pprof labels (all 0: events
    /// carry none).
    pub labels: LabelOffsets,
}

/// Offsets for reading a goroutine's pprof label set, when the target can
/// set labels (it links `runtime/pprof.runtime_setProfLabel`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabelOffsets {
    /// `labels` in `runtime.g` (0: no labels).
    pub g_labels: u64,
    /// Where, from the set's first word, the second word of its
    /// fingerprint sits (see [`labels_check`]).
    pub check_at: u64,
    /// `m` in `runtime.g` and `curg` in `runtime.m`: on the system stack
    /// (g0, whose labels are nil) the labels are the user goroutine's the
    /// thread runs, as Go's own CPU profiler takes them (0: unknown).
    pub g_m: u64,
    pub m_curg: u64,
    /// How the probes reads a set ([`SetLayout`] as u64; 0: it
    /// does not, and events carry fingerprints).
    pub format: u64,
}

/// A label set's fingerprint from its first word `w1` (its map, or its
/// slice's array) and the word `w2` at `w1 + TargetConfig::labels_check_at`
/// (the map's hash seed, or the first label's value): another set at the
/// same address differs in one or the other.
pub const fn labels_check(w1: u64, w2: u64) -> u64 {
    (w1 ^ w2.rotate_left(32)) & !label_capture::CAPTURED
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
    /// Holds that could not stop the target (`bpf_send_signal` failed).
    HoldFailures = 4,
    /// Fingerprints found to stand for two different stacks (a verifying
    /// walk differed from the remembered one); they are walked every time
    /// from then on.
    FingerprintCollisions = 5,
    /// User-mode faults merged into a [`FaultRun`] instead of being sent
    /// one record each.
    FaultsMerged = 6,
    /// Label sets the probes could not copy (too many labels, an
    /// unreadable or unknown shape): events under them are read the old
    /// way.
    LabelCaptureFailed = 7,
}

pub const COUNTER_COUNT: u32 = 8;

/// Byte offsets of the tracepoint fields the probes read, taken from the
/// kernel's `format` files at load time and handed to the eBPF object as a
/// global (`TP_OFFSETS`), so a kernel with another layout is refused by
/// user space rather than misread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `syscalls:sys_enter_*`: the first argument; the others follow at
    /// 8-byte steps.
    pub syscall_args: u64,
    /// `syscalls:sys_exit_*`: `long ret`.
    pub syscall_ret: u64,
    /// `sched:sched_process_exit`: `bool group_dead` (0: the field is
    /// absent, every exit counts).
    pub exit_group_dead: u64,
    /// `oom:mark_victim`: `int pid`, then `unsigned long anon_rss`,
    /// `file_rss` and `shmem_rss` (KiB, 8 bytes apart from `oom_anon_rss`).
    pub oom_pid: u64,
    pub oom_anon_rss: u64,
}

impl TracepointOffsets {
    /// The layout of the kernels memtrace is built and tested on.
    pub const DEFAULT: Self = Self {
        syscall_args: 16,
        syscall_ret: 16,
        exit_group_dead: 32,
        oom_pid: 8,
        oom_anon_rss: 24,
    };
}

/// A remembered stack is walked again, to verify that its fingerprint still
/// stands for it, on its reuses 1, 2, 4, … `REWALK_EVERY` and every
/// `REWALK_EVERY` reuses after that (see [`verify_on_use`]).
pub const REWALK_EVERY: u64 = 256;

/// Whether reuse number `n` (1 for the first reuse) of a remembered stack
/// walks the stack again to verify it: often at first, so two stacks that
/// share a fingerprint are told apart within a few events, then every
/// [`REWALK_EVERY`] reuses, so a stable stack costs one walk in 256.
#[inline(always)]
pub const fn verify_on_use(n: u64) -> bool {
    n != 0 && ((n <= REWALK_EVERY && n.is_power_of_two()) || n.is_multiple_of(REWALK_EVERY))
}
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const RINGBUF_BYTES: u32 = 16 * 1024 * 1024;
/// Once this many bytes wait in the ring buffer, producers wake the reader;
/// below it they submit with `BPF_RB_NO_WAKEUP` and the reader polls on a timer.
pub const RINGBUF_WAKE_BYTES: u64 = (RINGBUF_BYTES / 8) as u64;
/// Maximum number of target processes.
pub const MAX_TARGETS: u32 = 1024;

mod cookie;
pub mod label_capture;
pub use cookie::{SpawnCookie, AT_PUSH, AT_STACK_CHECK, POINT_FLAGS};
pub use label_capture::{CapturedLabel, LabelSetRecordOf, SetLayout};
mod fault_run;
pub use fault_run::{
    called_from, is_ephemeral_ref, FaultRun, FaultRuns, EPHEMERAL_REF, FAULT_RUN_MAX,
    FAULT_RUN_MAX_STRIDE, FAULT_RUN_SLOTS, FRAMELESS, FRAMELESS_REACH,
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TargetConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FaultRuns {}
}

#[cfg(test)]
mod tests;
