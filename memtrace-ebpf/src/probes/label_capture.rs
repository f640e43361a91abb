//! Label sets copied while they are alive. Services make a set per
//! request (`pprof.Do` in middleware) and drop it at once; by the time
//! user space read a set from the target, the collector had often freed
//! it and its address (or its strings' memory) held something else. But
//! while a probe runs under a set, the goroutine holding it is stopped in
//! the probe: the set is alive. So the first event under a set copies it
//! into the ring buffer, ahead of the event, with a generation kept in
//! [`LABEL_GENS`] under (process, address); events under it carry that
//! generation ([`super::labels_of`]) and user space matches them with the
//! copy.
//!
//! A set held at one instant survives the target's next GC cycle, so its
//! address names it until that cycle's mark termination; from then on it
//! may be freed and its address reused. So an entry holds only within the
//! GC cycle of the target it was made in ([`GC_EPOCHS`], bumped at
//! `gcMarkTermination`, before the sweep frees anything): the first event
//! under the address in a later cycle copies the set again. A set that
//! cannot be copied (more than [`CAPTURE_LABELS`] labels, a map of more
//! than one bucket, an unreadable word) or whose record is dropped gets no
//! entry, and its events fall back to a fingerprint.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user_buf},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use aya_log_ebpf::warn;
use memtrace_common::{
    label_capture::{hmap, LabelSetRecordOf, CAPTURED, CAPTURE_LABELS},
    CapturedLabel, Counter, SetLayout,
};

use super::{bump, wake_flags, EVENTS};

/// A set's address in a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SetKey {
    tgid: u32,
    _pad: u32,
    ptr: u64,
}

/// A copied set: its generation and the GC epoch of its process then.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Copied {
    gen: u64,
    epoch: u64,
}

/// (Process, set address) → the set copied there.
#[map]
pub static LABEL_GENS: LruHashMap<SetKey, Copied> = LruHashMap::with_max_entries(1 << 16, 0);

/// GC cycles seen, by tgid modulo its size: the epoch of a target's
/// copies. Targets that share a slot bump each other's epoch, which only
/// makes their sets copied again sooner.
#[map]
pub static GC_EPOCHS: Array<u64> = Array::with_max_entries(EPOCH_SLOTS, 0);

const EPOCH_SLOTS: u32 = 1 << 12;

/// The last set this CPU looked up: (tgid, address, GC epoch) → its
/// generation, with a checksum of the four, so that a read torn by
/// another program on this CPU misses rather than misleads.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastCopy {
    tgid: u64,
    ptr: u64,
    epoch: u64,
    gen: u64,
    sum: u64,
}

impl LastCopy {
    #[inline(always)]
    fn checksum(tgid: u64, ptr: u64, epoch: u64, gen: u64) -> u64 {
        (tgid ^ ptr.rotate_left(17) ^ epoch.rotate_left(31) ^ gen.rotate_left(47))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            | 1
    }
}

#[map]
static LAST_COPY: PerCpuArray<LastCopy> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU generation counter (the CPU number goes in the top bits).
#[map]
static NEXT_GEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A GC cycle of `tgid` began its mark termination: sets it held may be
/// freed from now on.
#[inline(always)]
pub fn gc_epoch_bump(tgid: u32) {
    if let Some(p) = GC_EPOCHS.get_ptr_mut(tgid % EPOCH_SLOTS) {
        // SAFETY: map value pointer; concurrent bumps may count once, and
        // the epoch still changes.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p).wrapping_add(1)) };
    }
}

#[inline(always)]
fn epoch(tgid: u32) -> u64 {
    match GC_EPOCHS.get_ptr(tgid % EPOCH_SLOTS) {
        // SAFETY: map value pointer; another CPU may bump it concurrently.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => u64::MAX,
    }
}

/// Logs a label set that could not be copied (`--ebpf-log`), in a BPF
/// function of its own (see `log_walk_failure`).
#[inline(never)]
fn log_unreadable(tgid: u32, ptr: u64) {
    warn!((), "label set unreadable: pid {} set at {:x}", tgid, ptr);
}

/// The generation of the set at `ptr` in `tgid`, which an event of
/// `tid` runs under (so the set is alive): the one it was copied under in
/// this GC cycle, or a new copy's (`layout` says how to read it). None:
/// it cannot be copied.
#[inline(always)]
pub fn generation(tgid: u32, tid: u32, ptr: u64, layout: u64) -> Option<u64> {
    let key = SetKey { tgid, _pad: 0, ptr };
    let now = epoch(tgid);
    let last = LAST_COPY.get_ptr_mut(0);
    if let Some(l) = last {
        // SAFETY: per-CPU map value, read by copy; a torn copy fails its
        // checksum.
        let l = unsafe { core::ptr::read_volatile(l) };
        let t = u64::from(tgid);
        if l.tgid == t
            && l.ptr == ptr
            && l.epoch == now
            && l.sum == LastCopy::checksum(t, ptr, now, l.gen)
        {
            return Some(l.gen);
        }
    }
    // SAFETY: a map value read by copy.
    let known = unsafe { LABEL_GENS.get(key) }
        .copied()
        .filter(|c| c.epoch == now);
    let gen = match known {
        Some(c) => c.gen,
        None if layout == SetLayout::None as u64 => return None,
        None => {
            let gen = memtrace_copy_set(tgid, tid, ptr, layout);
            if gen == 0 {
                bump(Counter::LabelCaptureFailed);
                log_unreadable(tgid, ptr);
                let _ = LABEL_GENS.remove(key);
                return None;
            }
            let _ = LABEL_GENS.insert(key, Copied { gen, epoch: now }, 0);
            gen
        }
    };
    if let Some(l) = last {
        let t = u64::from(tgid);
        let sum = LastCopy::checksum(t, ptr, now, gen);
        // SAFETY: per-CPU map value.
        unsafe {
            core::ptr::write_volatile(
                l,
                LastCopy {
                    tgid: t,
                    ptr,
                    epoch: now,
                    gen,
                    sum,
                },
            )
        };
    }
    Some(gen)
}

#[inline(always)]
fn next_gen() -> Option<u64> {
    let next = NEXT_GEN.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot; uprobes run with preemption off... and a
    // nested program on this CPU at worst skips a number.
    let count = unsafe {
        *next += 1;
        *next
    };
    // SAFETY: helper without preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() });
    Some((((cpu + 1) << 48) | (count & ((1 << 48) - 1))) & !CAPTURED)
}

/// Copies the first bytes of the string (`data`, `len`) into `dst`.
#[inline(always)]
fn copy_str<const N: usize>(dst: &mut [u8; N], data: u64, len: u64) -> Option<()> {
    let mut n = len;
    if n > N as u64 {
        n = N as u64;
    }
    if n == 0 {
        return Some(());
    }
    let dst = dst.get_mut(..n as usize)?;
    // SAFETY: the helper tolerates any source address.
    unsafe { bpf_probe_read_user_buf(data as *const u8, dst) }.ok()
}

/// Copies one label from its string headers `[key data, key len, value
/// data, value len]`.
#[inline(always)]
fn copy_label(l: &mut CapturedLabel, w: &[u64; 4]) -> Option<()> {
    if w[1] > u32::MAX as u64 || w[3] > u32::MAX as u64 {
        return None;
    }
    l.key_len = w[1] as u32;
    l.value_len = w[3] as u32;
    copy_str(&mut l.key, w[0], w[1])?;
    copy_str(&mut l.value, w[2], w[3])
}

/// Reads `n` (≤ 4) words at `at` into `w`.
#[inline(always)]
fn read_words(w: &mut [u64; 4], at: u64, n: u32) -> Option<()> {
    // SAFETY: `n` ≤ 4 words into `w`; the helper tolerates any source.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            w.as_mut_ptr().cast(),
            n.min(4) * 8,
            at as *const core::ffi::c_void,
        )
    };
    (r == 0).then_some(())
}

/// Reads two words at `at` into `w[2..4]`.
#[inline(always)]
fn read_two_at(w: &mut [u64; 4], at: u64) -> Option<()> {
    // SAFETY: two words into `w[2..4]`; the helper tolerates any source.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            w.as_mut_ptr().add(2).cast(),
            16,
            at as *const core::ffi::c_void,
        )
    };
    (r == 0).then_some(())
}

/// Where a set's labels are: Go ≥ 1.24's slice array, or Go 1.19–1.23's
/// one map bucket; and how many there are.
#[derive(Clone, Copy)]
struct Shape {
    slice: bool,
    base: u64,
    n: u64,
}

/// A set's shape from its header, if it can be copied: `ptr` → `{list
/// []label}` (slice), or `ptr` → `*hmap` of a `map[string]string` of one
/// bucket, not growing (map).
#[inline(always)]
fn shape(w: &mut [u64; 4], ptr: u64, layout: u64) -> Option<Shape> {
    if layout == SetLayout::Slice as u64 {
        read_words(w, ptr, 3)?;
        let (data, len, cap) = (w[0], w[1], w[2]);
        if len > cap || len > CAPTURE_LABELS as u64 {
            return None;
        }
        return Some(Shape {
            slice: true,
            base: data,
            n: len,
        });
    }
    read_words(w, ptr, 1)?;
    let h = w[0];
    if h == 0 {
        return Some(Shape {
            slice: false,
            base: 0,
            n: 0,
        });
    }
    read_words(w, h, 4)?;
    let (count, b) = (w[0], (w[1] >> ((hmap::B - 8) * 8)) & 0xff);
    if count > CAPTURE_LABELS as u64 || b != 0 || w[(hmap::OLD_BUCKETS / 8) as usize] != 0 {
        return None;
    }
    let bucket = w[(hmap::BUCKETS / 8) as usize];
    Some(Shape {
        slice: false,
        base: bucket,
        n: count,
    })
}

/// Fills `labels` with the set's labels; false if a word cannot be read.
#[inline(always)]
fn fill<const N: usize>(labels: &mut [CapturedLabel; N], w: &mut [u64; 4], s: Shape) -> bool {
    if s.n == 0 {
        return true;
    }
    if s.slice {
        for (i, l) in labels.iter_mut().enumerate() {
            if i as u64 >= s.n {
                break;
            }
            if read_words(w, s.base.wrapping_add(32 * i as u64), 4).is_none()
                || copy_label(l, w).is_none()
            {
                return false;
            }
        }
        return true;
    }
    if read_words(w, s.base, 1).is_none() {
        return false;
    }
    let top = w[0].to_le_bytes();
    let mut n = 0usize;
    for (i, t) in top.iter().enumerate() {
        if *t < hmap::MIN_TOPHASH {
            continue;
        }
        let Some(l) = labels.get_mut(n) else {
            return false;
        };
        let key = s.base.wrapping_add(hmap::KEYS + 16 * i as u64);
        let value = s.base.wrapping_add(hmap::VALUES + 16 * i as u64);
        if read_words(w, key, 2).is_none() || read_two_at(w, value).is_none() {
            return false;
        }
        if copy_label(l, w).is_none() {
            return false;
        }
        n += 1;
    }
    n as u64 == s.n
}

/// Sends the set in a record of room for `N` labels, written in place in
/// the ring buffer; its generation, or 0.
#[inline(always)]
fn send<const N: usize>(w: &mut [u64; 4], s: Shape, (tgid, tid, ptr): (u32, u32, u64)) -> u64 {
    let Some(gen) = next_gen() else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<LabelSetRecordOf<N>>(0) else {
        bump(Counter::RingbufDrops);
        return 0;
    };
    // SAFETY: the reserved record is this program's until submitted or
    // discarded; every field the reader reads is written below.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    rec.ev.write_label_set(tgid, tid, ptr, gen, s.n as u32);
    // SAFETY: helper without preconditions.
    rec.ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if !fill(&mut rec.labels, w, s) {
        entry.discard(0);
        return 0;
    }
    entry.submit(wake_flags());
    gen
}

/// Copies the set at `ptr` into the ring buffer; its generation, or 0
/// when it cannot be copied or the ring buffer is full. A global function
/// in the object, so the kernel verifies it once rather than at each of
/// the probes' calls.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn memtrace_copy_set(tgid: u32, tid: u32, ptr: u64, layout: u64) -> u64 {
    let mut w = [0u64; 4];
    let Some(s) = shape(&mut w, ptr, layout) else {
        return 0;
    };
    if s.n <= 2 {
        send::<2>(&mut w, s, (tgid, tid, ptr))
    } else {
        send::<CAPTURE_LABELS>(&mut w, s, (tgid, tid, ptr))
    }
}
