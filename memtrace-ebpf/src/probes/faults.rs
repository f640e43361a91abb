//! Page faults: the moments pages become resident. Their cost scales with
//! new resident pages, not with allocations. Raw tracepoints skip the
//! formatting work of classic ones.
//!
//! A program touching fresh memory faults page after page from one
//! instruction in one frame (a loop filling a buffer, the runtime
//! initializing spans). Reading the stack and sending a record for each
//! was most of the lens's cost, so such faults are merged into a
//! [`FaultRun`]: the first page goes out with its stack, the next ones
//! only count in `FAULT_RUNS` until the run ends, and then go out as one
//! `FaultRun` record. A run ends on a fault that does not extend it (see
//! [`FaultRun::extends`]), after [`FAULT_RUN_MAX`] pages, when a newer run
//! takes its slot, and at the thread's exit or exec; user space also reads
//! runs in progress (each second and at every report), so nothing waits
//! there for long. A release syscall anywhere bumps the release generation
//! and so ends every run at its next fault: pages of a run all faulted
//! before any release sent after its start, which is how user space orders
//! the two.
//!
//! The runs live per CPU, not per thread: a fault runs with preemption
//! off, so the CPU's table is the probe's alone, and reaching it is an
//! array index where a per-thread table was a hash lookup on every fault.
//! A thread that moves to another CPU starts new runs there; its old ones
//! stay until their slots are taken (and are sent then) or are read by
//! user space, which counts each page once by (thread, run start).
//!
//! A fault in a run's frame that only breaks its stride or its release
//! generation continues it in a new run without reading the stack again
//! (see [`FaultRun::continues`]).
//!
//! `copy()` and `clear()` into fresh memory fault in `runtime.memmove` and
//! `memclrNoHeapPointers`, which have no frame of their own: the frame
//! pointer is their caller's, so a walk from it skips the function (and
//! the line) that copies. Such a function is recognised at a run's first
//! page by the return address at the stack pointer ([`called_from`]); that
//! caller goes into the stack, and it keys the run.
//!
//! [`FAULT_RUN_MAX`]: memtrace_common::FAULT_RUN_MAX

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext,
};
use memtrace_common::{
    called_from, is_ephemeral_ref, Counter, Event, EventKind, FaultRun, FaultRuns, LabelOffsets,
    FAULT_RUN_SLOTS, FRAMELESS,
};

use super::{
    bump, current_target, current_target_cached, emit, emit_with_stack, emit_with_stack_for_run,
    entry_fingerprint, fault_floor, fingerprint, labels_known, labels_of, recheck_runs,
    release_gen, user_regs,
};

// arch/x86/include/asm/trace/exceptions.h, class x86_exceptions:
//   TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)
const PAGE_MASK: u64 = !0xfff;
/// Top of the x86-64 user address space (4-level paging; 5-level is larger
/// but user mappings above it need an explicit opt-in hint).
const USER_TOP: u64 = 0x0000_8000_0000_0000;

/// Runs in progress, per CPU (see the module docs).
#[map]
pub static FAULT_RUNS: PerCpuArray<FaultRuns> = PerCpuArray::with_max_entries(1, 0);

/// Ends `run`, if it holds one: marks it rewritten (odd `seq`, so user
/// space does not count a copy read after the record went out), sends what
/// it merged (`continued`: a new run goes on under its stack), and empties
/// it. Leaves `seq` odd; the caller closes it. A run under an ephemeral
/// stack reference is sent even with nothing merged when it is the last
/// to use the reference, so that user space can forget it.
#[inline(always)]
fn end_run(run: &mut FaultRun, continued: bool) -> u32 {
    let seq = run.seq.wrapping_add(1);
    run.seq = seq;
    if run.stack_ref != 0 && (run.count != 0 || (!continued && is_ephemeral_ref(run.stack_ref))) {
        let kind = if continued {
            EventKind::FaultRunContinued
        } else {
            EventKind::FaultRun
        };
        emit(Event::fault_run(kind, run));
    }
    run.stack_ref = 0;
    seq
}

/// Ends the current thread's runs on this CPU (its runs on other CPUs end
/// when their slots are taken; user space has read them by then).
#[inline(always)]
fn end_runs(tid: u32) {
    let Some(runs) = FAULT_RUNS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value; the probes that write it run with
    // preemption off, so nothing else on this CPU writes it meanwhile.
    let runs = unsafe { &mut *runs };
    for run in runs.runs.iter_mut() {
        if run.tid == tid && run.stack_ref != 0 {
            let seq = end_run(run, false);
            run.seq = seq.wrapping_add(1);
        }
    }
}

/// The key words of the frame a fault at `ip` happened in: the frame's
/// saved frame pointer and return address (read at `bp`), or, for a
/// function without a frame of its own ([`FRAMELESS`]), the return address
/// at `sp`, its caller. None: unreadable.
#[inline(always)]
fn frame_key(bp: u64, sp: u64, frameless: bool) -> Option<[u64; 2]> {
    if frameless {
        // SAFETY: bpf_probe_read_user tolerates any address.
        let ra: u64 = unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?;
        Some([FRAMELESS, ra])
    } else if bp != 0 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }.ok()
    } else {
        None
    }
}

/// The caller of the function faulting at `ip` if that function has no
/// frame of its own: the word at `sp`, when it is the return address of a
/// call into the function (see [`called_from`]). Read once per new run,
/// not per merged page; the caller is then the run's key.
#[inline(always)]
fn frameless_caller(ip: u64, sp: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user tolerates any address.
    let ra: u64 = unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?;
    if !(5..USER_TOP).contains(&ra) {
        return None;
    }
    // SAFETY: as above.
    let code = unsafe { bpf_probe_read_user((ra - 5) as *const [u8; 5]) }.ok()?;
    called_from(code, ra, ip).then_some(ra)
}

/// One pass over the slots: the most recent run in this frame (the one a
/// fault most likely extends), and the slot a new run would take (an
/// empty one, else the one used least recently). The choices are kept in
/// the map: as registers, each candidate index was a verifier state.
#[inline(always)]
fn choose_slots(runs: &mut FaultRuns, tgid: u32, tid: u32, ip: u64, bp: u64) {
    runs.cand = FAULT_RUN_SLOTS as u64;
    runs.cand_used = 0;
    runs.victim = 0;
    runs.victim_key = u64::MAX;
    for i in 0..FAULT_RUN_SLOTS {
        let run = &runs.runs[i];
        let used = runs.used[i];
        if run.stack_ref == 0 {
            if runs.victim_key != 0 {
                runs.victim_key = 0;
                runs.victim = i as u64;
            }
            continue;
        }
        let this_frame = run.tgid == tgid && run.tid == tid && run.ip == ip && run.bp == bp;
        if this_frame && used >= runs.cand_used {
            runs.cand = i as u64;
            runs.cand_used = used;
        }
        if used + 1 < runs.victim_key {
            runs.victim_key = used + 1;
            runs.victim = i as u64;
        }
    }
}

/// A user-mode fault at `page` at instruction `ip` with frame pointer `bp`
/// and stack pointer `sp`: merged into one of this CPU's runs, or sent
/// with its stack (and made the first page of a new run).
///
/// A run is keyed by its thread, instruction, frame pointer and the frame's
/// caller ([`frame_key`]). The caller is read on every page; whether the
/// function has a frame of its own (so which word names the caller) is
/// decided at the first page of a run in that frame, and kept with the run.
#[inline(always)]
fn user_fault<C: EbpfContext>(
    ctx: &C,
    (tgid, tid): (u32, u32),
    page: u64,
    regs: [u64; 3],
    (g, labels_off): (u64, LabelOffsets),
) {
    let [ip, bp, sp] = regs;
    let gen = release_gen();
    // The record (and the labels, a map lookup) is built only where one
    // goes out: building it up front put a call (zeroing its fields) on
    // the path of every merged fault.
    let ev = |l: (u64, u64)| Event::fault(tgid, tid, page, 4096).with_labels(l);
    let Some(runs) = FAULT_RUNS.get_ptr_mut(0) else {
        emit_with_stack(ctx, ev(labels_known(g, labels_off)), None);
        return;
    };
    // SAFETY: as in `end_runs`.
    let runs = unsafe { &mut *runs };
    runs.clock += 1;
    let clock = runs.clock;
    choose_slots(runs, tgid, tid, ip, bp);
    let found = runs.cand < FAULT_RUN_SLOTS as u64;
    let c = (runs.cand as usize) & (FAULT_RUN_SLOTS - 1);
    // Whether the function has a frame of its own is the run's, if there
    // is one; else it is found out now (and a frameless function's caller,
    // read on the way, is the key). In a run's frame the caller is read
    // again on every page (unless measuring without it): a function that
    // returned and was called again from another line at the same depth
    // has the same instruction and frame pointer, and its new buffer may
    // continue the old one's stride.
    let (frameless, key) = if found {
        let run = &runs.runs[c];
        let frameless = run.caller_bp == FRAMELESS;
        if recheck_runs() {
            (frameless, frame_key(bp, sp, frameless))
        } else {
            (frameless, Some([run.caller_bp, run.ra]))
        }
    } else {
        match frameless_caller(ip, sp) {
            Some(ra) => (true, Some([FRAMELESS, ra])),
            None => (false, frame_key(bp, sp, false)),
        }
    };
    let Some([k0, k1]) = key else {
        emit_with_stack(ctx, ev(labels_known(g, labels_off)), None);
        return;
    };
    let frame = [ip, bp, k0, k1];
    let i = if found && runs.runs[c].same_frame(tid, &frame) {
        runs.used[c] = clock;
        if merge(&mut runs.runs[c], tid, &frame, page, gen) {
            return;
        }
        // A new run of the same frame takes its slot.
        c
    } else {
        (runs.victim as usize) & (FAULT_RUN_SLOTS - 1)
    };
    runs.used[i] = clock;
    let run = &mut runs.runs[i];
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let seq = end_run(run, false);
    // A frameless function's caller is the return address at `sp`, which
    // the frame-pointer chain skips: it goes in as the second frame.
    let (fp, entry_ra) = if frameless {
        (entry_fingerprint(ip, bp, k1), k1)
    } else {
        (fingerprint(ip, bp), 0)
    };
    let labels = labels_of(g, labels_off);
    let stack_ref = emit_with_stack_for_run(ctx, ev(labels), fp, entry_ra);
    *run = FaultRun {
        tgid,
        tid,
        seq,
        _pad: 0,
        ip,
        bp,
        caller_bp: k0,
        ra: k1,
        first: page,
        last: page,
        stride: 0,
        count: 0,
        chain: 0,
        stack_ref,
        start_ns: now,
        gen,
        labels: labels.0,
        labels_check: labels.1,
    };
    run.seq = seq.wrapping_add(1);
}

/// Merges the fault at `page` into `run`, of the same frame: it extends
/// the run, or (off the stride or past a release) the run goes out and a
/// new one continues it under the same stack. False: a new run takes the
/// slot.
#[inline(always)]
fn merge(run: &mut FaultRun, tid: u32, frame: &[u64; 4], page: u64, gen: u64) -> bool {
    if run.extends(tid, frame, page, gen) {
        run.seq = run.seq.wrapping_add(1);
        run.stride = page.wrapping_sub(run.last);
        run.last = page;
        run.count += 1;
        run.chain += 1;
        run.seq = run.seq.wrapping_add(1);
        bump(Counter::FaultsMerged);
        return true;
    }
    if run.continues(page) {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let stack_ref = run.stack_ref;
        let seq = end_run(run, true);
        run.stack_ref = stack_ref;
        run.first = run.last;
        run.stride = page.wrapping_sub(run.last);
        run.last = page;
        run.count = 1;
        run.chain += 1;
        run.start_ns = now;
        run.gen = gen;
        run.seq = seq.wrapping_add(1);
        bump(Counter::FaultsMerged);
        return true;
    }
    false
}

/// The faulting page, if the address is a user one.
#[inline(always)]
fn user_page(addr: u64) -> Option<u64> {
    (addr != 0 && addr < USER_TOP).then_some(addr & PAGE_MASK)
}

/// A user-mode fault: `regs` are the user's, so the frame comes from them.
/// A BTF tracepoint reads them in place (a raw one would copy them out with
/// a helper call, on the hottest path of the lens).
#[btf_tracepoint(function = "page_fault_user")]
pub fn fault_user(ctx: BtfTracePointContext) -> i32 {
    let Some((tgid, tid, labels_off)) = current_target_cached() else {
        return 0;
    };
    if fault_floor() {
        return 0;
    }
    let Some(page) = user_page(ctx.arg(0)) else {
        return 0;
    };
    let regs: *const pt_regs = ctx.arg(1);
    // SAFETY: the tracepoint's BTF types `regs` (`struct pt_regs *`), so the
    // verifier checks these loads (and makes them fault-safe).
    let (frame, g) = unsafe { ([(*regs).rip, (*regs).rbp, (*regs).rsp], (*regs).r14) };
    user_fault(&ctx, (tgid, tid), page, frame, (g, labels_off));
    0
}

/// The kernel faulting on a user address on the process's behalf (copying
/// syscall results into untouched pages); the `regs` are the kernel's, so
/// the user stack is walked.
#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn fault_kernel(ctx: RawTracePointContext) -> i32 {
    let Some((tgid, tid, labels_off)) = current_target_cached() else {
        return 0;
    };
    if fault_floor() {
        return 0;
    }
    if let Some(page) = user_page(ctx.arg(0)) {
        let labels = if labels_off.g_labels == 0 {
            (0, 0)
        } else {
            user_regs().map_or((0, 0), |r| labels_of(r.r14, labels_off))
        };
        let ev = Event::fault(tgid, tid, page, 4096).with_labels(labels);
        emit_with_stack(&ctx, ev, None);
    }
    0
}

/// `sched:sched_process_exit`, for every thread of a target: its runs end.
#[tracepoint]
pub fn fault_runs_exit(_ctx: TracePointContext) -> u32 {
    if let Some((_, tid)) = current_target() {
        end_runs(tid);
    }
    0
}

/// `sched:sched_process_exec`: the thread's runs were in the old program.
#[tracepoint]
pub fn fault_runs_exec(_ctx: TracePointContext) -> u32 {
    if let Some((_, tid)) = current_target() {
        end_runs(tid);
    }
    0
}
