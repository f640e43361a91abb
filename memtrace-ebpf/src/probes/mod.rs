//! Maps and the emit path shared by every probe family.
//!
//! Stacks travel inline, after the event header, so there is no stack map to
//! fill up or collide in. Walking a stack is the dominant cost of an event,
//! so walked stacks are remembered by a fingerprint of their top (pc, frame
//! pointer and six return addresses) in `STACK_IDS`, under a reference the
//! record with the frames defines. A later event whose fingerprint matches
//! sends only that reference. The entry is inserted after its defining
//! record is committed, so a reference never reaches user space before its
//! definition. A remembered stack is walked again on its reuses 1, 2, 4, …
//! 256 and every 256 after that (`verify_on_use`); a walk that differs
//! from the remembered frames marks the fingerprint as standing for more
//! than one stack, and it is walked every time from then on.

pub mod alloc;
pub mod faults;
pub mod gc;
pub mod go_abi;
pub mod goroutines;
pub mod hold;
pub mod label_capture;
pub mod labels;
pub mod procs;
mod switches;
pub mod syscalls;

pub use labels::{labels_known, labels_of, user_regs};
pub use switches::{fault_floor, recheck_runs, tp_offsets};
use switches::{injected_walk_errno, log_walk_failure, stack_cache_on};

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_get_stack, bpf_ktime_get_ns,
        bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    EbpfContext,
};
use memtrace_common::{
    verify_on_use, Counter, Event, LabelOffsets, StackField, TargetConfig, COUNTER_COUNT,
    EPHEMERAL_REF, EVENT_SIZE, MAX_FRAMES, MAX_TARGETS, RINGBUF_BYTES, RINGBUF_WAKE_BYTES,
};

/// The current thread's (tgid, tid) and its process's `g.labels` offset
/// (0: no labels), if its process is a target.
#[inline(always)]
pub fn current_target_labels() -> Option<(u32, u32, LabelOffsets)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: a map value read by copy.
    let config = unsafe { TARGETS.get(tgid) }?;
    Some((tgid, id as u32, config.labels))
}

#[map]
pub static TARGETS: HashMap<u32, TargetConfig> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Targets `go_hold` stopped: tgid → when (ktime ns). User space removes
/// the entry as it continues the target; an entry that stays is a target
/// left stopped, which its watchdog continues.
#[map]
pub static HELD: HashMap<u32, u64> = HashMap::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// A record under construction: header, then frames.
#[repr(C)]
pub struct Record {
    ev: Event,
    ips: [u64; MAX_FRAMES],
}

#[map]
static SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// A remembered stack: its reference, how often it stood in for a walk,
/// and a hash of its frames (to verify it on later walks).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackRef {
    id: u64,
    uses: u64,
    hash: u64,
}

/// `StackRef::uses` of a fingerprint that stood for two different stacks:
/// it is walked every time from then on.
const COLLIDED: u64 = u64::MAX;

#[map]
static STACK_IDS: HashMap<Fingerprint, StackRef> = HashMap::with_max_entries(64 * 1024, 0);

/// The release generation: bumped by every release syscall (munmap,
/// madvise, mremap, brk, a fixed mmap) of a target, so that a run of merged faults
/// never spans one (see `faults.rs`).
#[map]
static RELEASE_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// The current release generation.
#[inline(always)]
pub fn release_gen() -> u64 {
    match RELEASE_GEN.get_ptr(0) {
        // SAFETY: map value pointer; another CPU may bump it concurrently.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// A release syscall was sent: runs of merged faults begun before it end.
/// (Concurrent bumps may count once; the generation still changes.)
#[inline(always)]
pub fn bump_release_gen() {
    if let Some(p) = RELEASE_GEN.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1)) };
    }
}

/// Per-CPU counter for new references (the CPU number goes in the top bits).
#[map]
static NEXT_REF: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bumped by user space after every change to `TARGETS`: a verdict
/// [`current_target_cached`] remembered under an older value is not used.
#[map]
static TARGETS_EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// The last thread [`current_target_cached`] checked on this CPU, and
/// whether its process was a target.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TargetVerdict {
    pid_tgid: u64,
    epoch: u64,
    target: u64,
    /// How to read the target's labels.
    labels: LabelOffsets,
}

#[map]
static TARGET_VERDICT: PerCpuArray<TargetVerdict> = PerCpuArray::with_max_entries(1, 0);

/// As [`current_target_labels`], remembering the answer for the thread per CPU
/// (until `TARGETS` changes): faults come in bursts from one thread, and
/// the hash lookup was a fifth of the fault probe's time. Only for
/// programs that run with preemption off (the fault tracepoints), so that
/// no other program rewrites the CPU's verdict halfway.
#[inline(always)]
pub fn current_target_cached() -> Option<(u32, u32, LabelOffsets)> {
    let id = bpf_get_current_pid_tgid();
    let epoch = match TARGETS_EPOCH.get_ptr(0) {
        // SAFETY: map value pointer; user space may bump it concurrently.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => return current_target_labels(),
    };
    let Some(v) = TARGET_VERDICT.get_ptr_mut(0) else {
        return current_target_labels();
    };
    // SAFETY: per-CPU map value, written with preemption off.
    let v = unsafe { &mut *v };
    if v.pid_tgid != id || v.epoch != epoch {
        let found = current_target_labels();
        v.target = u64::from(found.is_some());
        v.labels = found.map_or(LabelOffsets::default(), |(_, _, l)| l);
        v.pid_tgid = id;
        v.epoch = epoch;
    }
    (v.target != 0).then_some(((id >> 32) as u32, id as u32, v.labels))
}

/// The current thread's (tgid, tid) if its process is a target.
#[inline(always)]
pub fn current_target() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { TARGETS.get(tgid) }.is_some() {
        Some((tgid, id as u32))
    } else {
        None
    }
}

#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn wake_flags() -> u64 {
    (if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= RINGBUF_WAKE_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }) as u64
}

/// Sends a record already built (`bytes`); a full ring buffer counts a drop.
#[inline(always)]
fn output(bytes: &[u8]) -> bool {
    let sent = EVENTS.output::<[u8]>(bytes, wake_flags()).is_ok();
    if !sent {
        bump(Counter::RingbufDrops);
    }
    sent
}

#[inline(always)]
fn send(mut ev: Event, flags: u64) -> bool {
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<Event>(&ev, flags).is_err() {
        bump(Counter::RingbufDrops);
        return false;
    }
    true
}

/// Sends a header-only record. The reader is only woken once a batch has
/// piled up: a wakeup per event would cost ~6 µs each on the hot path.
#[inline(always)]
pub fn emit(ev: Event) -> bool {
    send(ev, wake_flags())
}

/// Sends a header-only record and wakes the reader now (a target waits
/// for it).
#[inline(always)]
pub fn emit_now(ev: Event) -> bool {
    send(ev, BPF_RB_FORCE_WAKEUP as u64)
}

/// FNV-1a over `ips` and the frame count. `bpf_get_stack` zeroes the
/// buffer past the frames it wrote (its buffer argument is uninitialised
/// memory it must fill), so every word is hashed without a branch on
/// `frames`: a branch per word made the verifier walk the rest of
/// `emit_with_stack` once per possible count, seconds of load time.
#[inline(always)]
fn frames_hash(ips: &[u64; MAX_FRAMES], frames: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ frames as u64;
    for ip in ips {
        h = (h ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Return addresses in a [`Fingerprint`]. Deep enough to reach past the
/// runtime's own frames (e.g. memmove ← copystack ← newstack ← morestack)
/// to the code that called into them.
const FP_FRAMES: usize = 6;

/// The top of a user stack: pc, frame pointer, and the next `FP_FRAMES`
/// return addresses along the frame-pointer chain (0 past its end).
pub type Fingerprint = [u64; 2 + FP_FRAMES];

/// Reads the fingerprint of the stack whose registers are `ip` and `bp`.
#[inline(always)]
pub fn fingerprint(ip: u64, bp: u64) -> Option<Fingerprint> {
    fingerprint_from(ip, bp, 0)
}

/// As [`fingerprint`], but the return addresses kept start at the frame
/// that returns to `first_ra` when one of the first three does: for a probe
/// whose top frames are always the same (the runtime's `systemstack`
/// switch, one or two frames depending on the Go version), so that the
/// `FP_FRAMES` kept all tell callers apart. `first_ra` 0, or not found:
/// start at `bp`.
#[inline(always)]
pub fn fingerprint_from(ip: u64, bp: u64, first_ra: u64) -> Option<Fingerprint> {
    if !stack_cache_on() {
        return None; // every stack walked
    }
    let mut out = [0u64; 2 + FP_FRAMES];
    out[0] = ip;
    out[1] = bp;
    let mut frame = bp;
    if first_ra != 0 {
        let mut at = bp;
        for _ in 0..3 {
            if at == 0 {
                break;
            }
            // SAFETY: bpf_probe_read_user tolerates any address.
            let f: [u64; 2] = unsafe { bpf_probe_read_user(at as *const [u64; 2]) }.ok()?;
            if f[1] == first_ra {
                frame = at;
                break;
            }
            at = f[0];
        }
    }
    read_chain(&mut out, 2, frame)?;
    Some(out)
}

/// Fills `out[from..]` with the return addresses along the frame-pointer
/// chain from `frame` (0 past its end).
#[inline(always)]
fn read_chain(out: &mut Fingerprint, from: usize, mut frame: u64) -> Option<()> {
    for slot in out.iter_mut().skip(from) {
        if frame == 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user tolerates any address.
        let f: [u64; 2] = unsafe { bpf_probe_read_user(frame as *const [u64; 2]) }.ok()?;
        *slot = f[1];
        frame = f[0];
    }
    Some(())
}

/// Sends `ev` with the current user stack: a reference when `fp` matches a
/// remembered stack, else the walked frames inline (defining a reference
/// when there is a fingerprint to remember it by). Some matches walk anyway
/// to verify the remembered stack (see the module docs). Returns the
/// reference the record used or defined (0: none, or not sent).
#[inline(always)]
pub fn emit_with_stack<C: EbpfContext>(ctx: &C, ev: Event, fp: Option<Fingerprint>) -> u64 {
    emit_with_stack_entry(ctx, ev, fp, 0)
}

/// As [`fingerprint`], for the top two words of a stack whose frame is
/// not set up yet (a probe on a function's `PUSHQ BP`), then the
/// frame-pointer chain, which starts at the caller's caller.
#[inline(always)]
pub fn entry_fingerprint(ip: u64, bp: u64, ra: u64) -> Option<Fingerprint> {
    if !stack_cache_on() {
        return None; // every stack walked
    }
    let mut out = [0u64; 2 + FP_FRAMES];
    out[0] = ip;
    out[1] = bp;
    out[2] = ra;
    read_chain(&mut out, 3, bp)?;
    Some(out)
}

/// [`emit_with_stack`] at a function's entry: `entry_ra` (non-zero) is the
/// return address at the stack pointer, which a frame-pointer walk misses;
/// it goes in as the second frame unless the kernel's walk has it already
/// (recent kernels add it for uprobes on `push %rbp`).
#[inline(always)]
pub fn emit_with_stack_entry<C: EbpfContext>(
    ctx: &C,
    ev: Event,
    fp: Option<Fingerprint>,
    entry_ra: u64,
) -> u64 {
    emit_stack(ctx, ev, fp, entry_ra, false, 0)
}

/// As [`emit_with_stack`], for the first page of a run of merged faults:
/// a walked stack no fingerprint can stand for (none, or one shared with
/// other stacks) still gets a reference, an [`EPHEMERAL_REF`] only the run
/// (and the runs that continue it) uses. `leaf_ra` (0: none) is the
/// return address at the stack pointer of a function with no frame of its
/// own, its caller, which the frame-pointer walk skips: it goes in as the
/// second frame.
#[inline(always)]
pub fn emit_with_stack_for_run<C: EbpfContext>(
    ctx: &C,
    ev: Event,
    fp: Option<Fingerprint>,
    leaf_ra: u64,
) -> u64 {
    emit_stack(ctx, ev, fp, 0, true, leaf_ra)
}

#[inline(always)]
fn emit_stack<C: EbpfContext>(
    ctx: &C,
    mut ev: Event,
    fp: Option<Fingerprint>,
    entry_ra: u64,
    ephemeral: bool,
    leaf_ra: u64,
) -> u64 {
    // The remembered stack this walk verifies (id 0: none).
    let (mut check_id, mut check_hash) = (0u64, 0u64);
    let mut collided = false;
    if let Some(words) = fp.as_ref() {
        if let Some(known) = STACK_IDS.get_ptr_mut(words) {
            // SAFETY: map value pointer, valid for this program run.
            let known = unsafe { &mut *known };
            if known.uses == COLLIDED {
                collided = true;
            } else {
                known.uses += 1;
                if !verify_on_use(known.uses) {
                    ev.stack = StackField::Ref.encode();
                    ev.stack_ref = known.id;
                    bump(Counter::StackReuses);
                    return if emit(ev) { known.id } else { 0 };
                }
                check_id = known.id;
                check_hash = known.hash;
            }
        }
    }
    let Some(rec) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by one program at a time on this CPU.
    let rec = unsafe { &mut *rec };
    // With a `leaf_ra`, the walk goes one slot up and the leaf's caller
    // in between (a shift of the walked frames would be a loop the
    // verifier walks on every path). `entry_ra` cannot do the same: a
    // recent kernel's walk from a uprobe at a function's entry has the
    // return address already, so it is inserted only when missing; a
    // fault's walk never has it.
    let skip = usize::from(leaf_ra != 0);
    // SAFETY: the buffer is MAX_FRAMES u64s long; `skip` is 0 or 1.
    let injected = injected_walk_errno();
    let n = if injected != 0 {
        -i64::from(injected)
    } else {
        // SAFETY: as above.
        unsafe {
            bpf_get_stack(
                ctx.as_ptr(),
                rec.ips.as_mut_ptr().add(skip).cast(),
                ((MAX_FRAMES - skip) * 8) as u32,
                BPF_F_USER_STACK as u64,
            )
        }
    };
    if n <= 0 {
        bump(Counter::StackErrors);
        let errno = if n < 0 {
            (-n) as u32
        } else {
            61 /* ENODATA */
        };
        log_walk_failure(ev.tgid, errno, ev.kind);
        ev.stack = StackField::Error(errno).encode();
        emit(ev);
        return 0;
    }
    let mut frames = ((n as usize) / 8).min(MAX_FRAMES);
    if skip != 0 {
        rec.ips[0] = rec.ips[1];
        rec.ips[1] = leaf_ra;
        frames = (frames + 1).min(MAX_FRAMES);
    }
    if entry_ra != 0 && (frames < 2 || rec.ips[1] != entry_ra) {
        let mut i = MAX_FRAMES - 1;
        while i >= 2 {
            rec.ips[i] = rec.ips[i - 1];
            i -= 1;
        }
        rec.ips[1] = entry_ra;
        frames = (frames + 1).min(MAX_FRAMES);
    }
    let hash = frames_hash(&rec.ips, frames);
    if check_id != 0 {
        if hash == check_hash {
            // Verified: the remembered stack stands.
            ev.stack = StackField::Ref.encode();
            ev.stack_ref = check_id;
            return if emit(ev) { check_id } else { 0 };
        }
        if let Some(words) = fp.as_ref() {
            if let Some(known) = STACK_IDS.get_ptr_mut(words) {
                // SAFETY: map value pointer, valid for this program run.
                unsafe { (*known).uses = COLLIDED };
            }
        }
        bump(Counter::FingerprintCollisions);
        collided = true;
    }
    let shared = fp.is_some() && !collided;
    send_walked(rec, ev, frames, fp.as_ref(), shared, ephemeral, hash)
}

/// Sends the stack walked into `rec` (`frames` of them) with `ev`. A
/// shared stack (remembered under `fp`) or an `ephemeral` one gets a
/// reference of its own, which is returned (0: none, or not sent).
#[inline(always)]
fn send_walked(
    rec: &mut Record,
    mut ev: Event,
    frames: usize,
    fp: Option<&Fingerprint>,
    shared: bool,
    ephemeral: bool,
    hash: u64,
) -> u64 {
    ev.stack = StackField::Frames(frames as u32).encode();
    if shared || ephemeral {
        if let Some(next) = NEXT_REF.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            let count = unsafe {
                *next += 1;
                *next
            };
            // SAFETY: helper without preconditions.
            let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
            let kind = if shared { 0 } else { EPHEMERAL_REF };
            ev.stack_ref = ((cpu + 1) << 48) | kind | (count & (EPHEMERAL_REF - 1));
        }
    }
    // SAFETY: helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    rec.ev = ev;
    let len = EVENT_SIZE + frames * 8;
    if len > core::mem::size_of::<Record>() {
        return 0;
    }
    // SAFETY: `len` bytes of `rec` are initialised (header plus `frames`).
    let bytes = unsafe { core::slice::from_raw_parts((rec as *const Record).cast::<u8>(), len) };
    if !output(bytes) {
        return 0;
    }
    if let (Some(words), true) = (fp, shared && ev.stack_ref != 0) {
        let known = StackRef {
            id: ev.stack_ref,
            uses: 0,
            hash,
        };
        let _ = STACK_IDS.insert(words, known, 0);
    }
    ev.stack_ref
}
