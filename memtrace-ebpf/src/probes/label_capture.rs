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
    maps::{LruHashMap, PerCpuArray},
};
use memtrace_common::{
    label_capture::{hmap, CAPTURED, CAPTURED_LABEL_SIZE, CAPTURE_LABELS},
    CapturedLabel, Counter, Event, LabelSetRecord, SetLayout, EVENT_SIZE,
};

use super::{bump, output};

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

/// A target's GC cycles seen (tgid → count): the epoch of its copies.
#[map]
pub static GC_EPOCHS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1 << 12, 0);

/// A copy under way: the record, and the words read to find its strings
/// (kept here, off the BPF stack, which the probes that call
/// [`copy_set`] use most of).
#[repr(C)]
pub struct Capture {
    rec: LabelSetRecord,
    w: [u64; 4],
}

#[map]
static CAPTURE: PerCpuArray<Capture> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU generation counter (the CPU number goes in the top bits).
#[map]
static NEXT_GEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A GC cycle of `tgid` began its mark termination: sets it held may be
/// freed from now on.
#[inline(always)]
pub fn gc_epoch_bump(tgid: u32) {
    let next = epoch(tgid).wrapping_add(1);
    let _ = GC_EPOCHS.insert(tgid, next, 0);
}

#[inline(always)]
fn epoch(tgid: u32) -> u64 {
    // SAFETY: a map value read by copy.
    unsafe { GC_EPOCHS.get(tgid) }.copied().unwrap_or(0)
}

/// The generation of the set at `ptr` in `tgid`, which an event of
/// `tid` runs under (so the set is alive): the one it was copied under in
/// this GC cycle, or a new copy's (`layout` says how to read it). None:
/// it cannot be copied.
#[inline(always)]
pub fn generation(tgid: u32, tid: u32, ptr: u64, layout: u64) -> Option<u64> {
    let key = SetKey { tgid, _pad: 0, ptr };
    let now = epoch(tgid);
    // SAFETY: a map value read by copy.
    if let Some(c) = unsafe { LABEL_GENS.get(key) }.copied() {
        if c.epoch == now {
            return Some(c.gen);
        }
    }
    if layout == SetLayout::None as u64 {
        return None;
    }
    let gen = memtrace_copy_set(tgid, tid, ptr, layout);
    if gen == 0 {
        bump(Counter::LabelCaptureFailed);
        let _ = LABEL_GENS.remove(key);
        return None;
    }
    let _ = LABEL_GENS.insert(key, Copied { gen, epoch: now }, 0);
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
    let r = unsafe { bpf_probe_read_user_buf(data as *const u8, dst) };
    r.ok()
}

/// Copies one label from its string headers `[key data, key len, value
/// data, value len]`.
#[inline(always)]
fn copy_label(l: &mut CapturedLabel, w: [u64; 4]) -> Option<()> {
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

/// Go ≥ 1.24: `ptr` → `{list []label}`, each label two string headers.
#[inline(always)]
fn copy_slice(c: &mut Capture, ptr: u64) -> Option<usize> {
    read_words(&mut c.w, ptr, 3)?;
    let (data, len, cap) = (c.w[0], c.w[1], c.w[2]);
    if len > cap || len > CAPTURE_LABELS as u64 {
        return None;
    }
    for i in 0..CAPTURE_LABELS {
        if i as u64 >= len {
            break;
        }
        read_words(&mut c.w, data.wrapping_add(32 * i as u64), 4)?;
        copy_label(&mut c.rec.labels[i], c.w)?;
    }
    Some(len as usize)
}

/// Go 1.19–1.23: `ptr` → `*hmap` of a `map[string]string`; only a map of
/// one bucket, not growing, is copied.
#[inline(always)]
fn copy_map(c: &mut Capture, ptr: u64) -> Option<usize> {
    read_words(&mut c.w, ptr, 1)?;
    let h = c.w[0];
    if h == 0 {
        return Some(0);
    }
    read_words(&mut c.w, h, 4)?;
    let (count, b) = (c.w[0], (c.w[1] >> ((hmap::B - 8) * 8)) & 0xff);
    if count > CAPTURE_LABELS as u64 || b != 0 || c.w[(hmap::OLD_BUCKETS / 8) as usize] != 0 {
        return None;
    }
    if count == 0 {
        return Some(0);
    }
    let bucket = c.w[(hmap::BUCKETS / 8) as usize];
    read_words(&mut c.w, bucket, 1)?;
    let top = c.w[0].to_le_bytes();
    let mut n = 0usize;
    for (i, t) in top.iter().enumerate() {
        if *t < hmap::MIN_TOPHASH {
            continue;
        }
        read_words(&mut c.w, bucket.wrapping_add(hmap::KEYS + 16 * i as u64), 2)?;
        let (k0, k1) = (c.w[0], c.w[1]);
        read_words(
            &mut c.w,
            bucket.wrapping_add(hmap::VALUES + 16 * i as u64),
            2,
        )?;
        let w = [k0, k1, c.w[0], c.w[1]];
        copy_label(c.rec.labels.get_mut(n)?, w)?;
        n += 1;
    }
    (n as u64 == count).then_some(n)
}

/// Copies the set at `ptr` into the ring buffer; its generation, or 0
/// when it cannot be copied or the record is dropped. A function of its
/// own in the object (not inlined), called from every probe that reads
/// labels.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn memtrace_copy_set(tgid: u32, tid: u32, ptr: u64, layout: u64) -> u64 {
    let Some(c) = CAPTURE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value; the probes run with preemption off.
    let c = unsafe { &mut *c };
    let n = if layout == SetLayout::Slice as u64 {
        copy_slice(c, ptr)
    } else {
        copy_map(c, ptr)
    };
    let rec = &mut c.rec;
    let (Some(n), Some(gen)) = (n, next_gen()) else {
        return 0;
    };
    rec.ev = Event::label_set(tgid, tid, ptr, gen, n as u32);
    // SAFETY: helper without preconditions.
    rec.ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let len = EVENT_SIZE + n * CAPTURED_LABEL_SIZE;
    if len > core::mem::size_of::<LabelSetRecord>() {
        return 0;
    }
    // SAFETY: `len` bytes of `rec` are initialised (header plus `n` labels).
    let bytes = unsafe { core::slice::from_raw_parts((rec as *const LabelSetRecord).cast(), len) };
    if output(bytes) {
        gen
    } else {
        0
    }
}
