//! Label sets captured while they are alive. Services make a set per
//! request (`pprof.Do` in middleware) and drop it at once; by the time
//! user space read a set from the target, the collector had often freed
//! it and its address (or its strings' memory) held something else. So
//! the probe where a goroutine's labels are stored
//! (`runtime/pprof.runtime_setProfLabel(labels)`, after its frame setup)
//! copies the set into the ring buffer and gives it a generation, kept in
//! [`LABEL_GENS`] under (process, address). Events under the set carry
//! that generation ([`super::labels_of`]); user space matches it with the
//! copy, which went into the ring buffer before any of them.
//!
//! A set lives at its address until the collector frees it, and nothing
//! can store another set there before that, so the entry names the set
//! for as long as any goroutine holds it. A set that cannot be copied
//! (more than [`CAPTURE_LABELS`] labels, a map of more than one bucket,
//! an unreadable word) or whose record is dropped removes the entry, so
//! that an older set at the same address is never named for it; its
//! events fall back to a fingerprint.

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{map, uprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use memtrace_common::{
    label_capture::{hmap, CAPTURED, CAPTURED_LABEL_SIZE, CAPTURE_LABELS},
    CapturedLabel, Counter, Event, LabelSetRecord, SetLayout, EVENT_SIZE,
};

use super::{bump, current_target_labels, go_abi, output};

/// A set's address in a process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SetKey {
    tgid: u32,
    _pad: u32,
    ptr: u64,
}

/// (Process, set address) → the generation of the set captured there.
#[map]
pub static LABEL_GENS: LruHashMap<SetKey, u64> = LruHashMap::with_max_entries(1 << 16, 0);

#[map]
static CAPTURE: PerCpuArray<LabelSetRecord> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU generation counter (the CPU number goes in the top bits).
#[map]
static NEXT_GEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The generation of the set captured at `ptr` in `tgid`, if it was.
#[inline(always)]
pub fn generation(tgid: u32, ptr: u64) -> Option<u64> {
    let key = SetKey { tgid, _pad: 0, ptr };
    // SAFETY: a map value read by copy.
    unsafe { LABEL_GENS.get(key) }.copied()
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

#[inline(always)]
fn read<T>(at: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user tolerates any address.
    unsafe { bpf_probe_read_user(at as *const T) }.ok()
}

/// Go ≥ 1.24: `ptr` → `{list []label}`, each label two string headers.
#[inline(always)]
fn copy_slice(rec: &mut LabelSetRecord, ptr: u64) -> Option<usize> {
    let [data, len, cap] = read::<[u64; 3]>(ptr)?;
    if len > cap || len > CAPTURE_LABELS as u64 {
        return None;
    }
    for i in 0..CAPTURE_LABELS {
        if i as u64 >= len {
            break;
        }
        let w = read::<[u64; 4]>(data.wrapping_add(32 * i as u64))?;
        copy_label(&mut rec.labels[i], w)?;
    }
    Some(len as usize)
}

/// Go 1.19–1.23: `ptr` → `*hmap` of a `map[string]string`; only a map of
/// one bucket, not growing, is copied.
#[inline(always)]
fn copy_map(rec: &mut LabelSetRecord, ptr: u64) -> Option<usize> {
    let h = read::<u64>(ptr)?;
    if h == 0 {
        return Some(0);
    }
    let head = read::<[u64; 4]>(h)?;
    let (count, b) = (head[0], (head[1] >> ((hmap::B - 8) * 8)) & 0xff);
    if count > CAPTURE_LABELS as u64 || b != 0 || head[(hmap::OLD_BUCKETS / 8) as usize] != 0 {
        return None;
    }
    if count == 0 {
        return Some(0);
    }
    let bucket = head[(hmap::BUCKETS / 8) as usize];
    let top = read::<[u8; 8]>(bucket)?;
    let mut n = 0usize;
    for (i, t) in top.iter().enumerate() {
        if *t < hmap::MIN_TOPHASH {
            continue;
        }
        let k = read::<[u64; 2]>(bucket.wrapping_add(hmap::KEYS + 16 * i as u64))?;
        let v = read::<[u64; 2]>(bucket.wrapping_add(hmap::VALUES + 16 * i as u64))?;
        copy_label(rec.labels.get_mut(n)?, [k[0], k[1], v[0], v[1]])?;
        n += 1;
    }
    (n as u64 == count).then_some(n)
}

/// After `runtime/pprof.runtime_setProfLabel`'s frame setup: the set
/// being stored is its first argument.
#[uprobe]
pub fn go_labels_set(ctx: ProbeContext) -> u32 {
    let Some((tgid, tid, off)) = current_target_labels() else {
        return 0;
    };
    let ptr = go_abi::arg(&ctx, 0);
    if ptr == 0 || off.format == SetLayout::None as u64 {
        return 0;
    }
    let key = SetKey { tgid, _pad: 0, ptr };
    let Some(rec) = CAPTURE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU map value; uprobes run with preemption off.
    let rec = unsafe { &mut *rec };
    let n = if off.format == SetLayout::Slice as u64 {
        copy_slice(rec, ptr)
    } else {
        copy_map(rec, ptr)
    };
    let (Some(n), Some(gen)) = (n, next_gen()) else {
        bump(Counter::LabelCaptureFailed);
        let _ = LABEL_GENS.remove(key);
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
        let _ = LABEL_GENS.insert(key, gen, 0);
    } else {
        let _ = LABEL_GENS.remove(key);
    }
    0
}
