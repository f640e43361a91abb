//! The SIGBUS guard of mapped executables: a registry of the mappings'
//! address ranges, and a handler that, for a fault inside one (the file
//! shrank under it), maps a page of zeros over the faulting page and lets
//! the read run again. A fault anywhere else goes to the handler that was
//! there before (Rust's own, or the default: the process dies as it would
//! have).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings guarded at once; beyond, a mapping is used unguarded (a node
/// runs far fewer distinct Go executables).
const SLOTS: usize = 1024;

/// Each slot: start (0: free) and end of one mapping.
static RANGES: [(AtomicU64, AtomicU64); SLOTS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; SLOTS];
/// Faults turned into zero pages so far.
static FAULTS: AtomicU64 = AtomicU64::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();
/// The SIGBUS action before the guard's, for faults that are not its own.
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::zeroed();

/// How many reads of a mapped file found it shrunk (and read zeros).
pub fn bus_faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Guards `[start, start + len)`; returns its slot, or `None` when every
/// slot is taken.
pub(super) fn register(start: u64, len: u64) -> Option<usize> {
    INSTALL.call_once(install);
    for (i, (s, e)) in RANGES.iter().enumerate() {
        if s.compare_exchange(0, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            e.store(start.saturating_add(len), Ordering::Release);
            s.store(start, Ordering::Release);
            return Some(i);
        }
    }
    log::warn!("more than {SLOTS} executables mapped: this one is not guarded against shrinking");
    None
}

/// Frees `slot` (its mapping is about to be unmapped).
pub(super) fn unregister(slot: usize) {
    RANGES[slot].0.store(0, Ordering::Release);
}

fn guarded(addr: u64) -> bool {
    RANGES.iter().any(|(s, e)| {
        let s = s.load(Ordering::Acquire);
        s != 0 && s != u64::MAX && addr >= s && addr < e.load(Ordering::Acquire)
    })
}

fn install() {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        PAGE.store(page as usize, Ordering::Relaxed);
    }
    // SAFETY: a zeroed sigaction is valid; the handler is async-signal
    // safe (atomics and mmap only); PREVIOUS is written here once, before
    // the handler can run, and only read by it afterwards.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut act.sa_mask);
        let previous = std::ptr::addr_of_mut!(PREVIOUS).cast::<libc::sigaction>();
        if libc::sigaction(libc::SIGBUS, &act, previous) != 0 {
            log::warn!("cannot catch SIGBUS: a binary shrunk while mapped would stop memtrace");
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as u64;
    if guarded(addr) {
        let page = PAGE.load(Ordering::Relaxed) as u64;
        let at = addr & !(page - 1);
        // SAFETY: replaces one page of a read-only private file mapping
        // this process owns (registered) with zeros; nothing holds a
        // mutable reference into it.
        let m = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if m != libc::MAP_FAILED {
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not ours: what was there before handles it.
    // SAFETY: PREVIOUS was set by install() before this handler existed.
    unsafe {
        let prev = &*std::ptr::addr_of!(PREVIOUS).cast::<libc::sigaction>();
        if prev.sa_flags & libc::SA_SIGINFO != 0 && prev.sa_sigaction > 1 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(prev.sa_sigaction);
            f(sig, info, ctx);
        } else if prev.sa_sigaction > 1 {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(prev.sa_sigaction);
            f(sig);
        } else {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        }
    }
}
