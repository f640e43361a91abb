//! Process lifecycle for the agent: `sched:sched_process_exec` announces every
//! exec on the host (rare, so no filter; user space decides whether the new
//! program is Go), and `sched:sched_process_exit` a target's last thread.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use memtrace_common::EventKind;

use super::{current_target, emit, event};

// /sys/kernel/tracing/events/sched/sched_process_exit/format:
//   field:bool group_dead; offset:32; size:1; signed:0;
const EXIT_GROUP_DEAD: usize = 32;

#[tracepoint]
pub fn proc_exec(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    emit(event(EventKind::ProcExec, (id >> 32) as u32, id as u32));
    0
}

#[tracepoint]
pub fn proc_exit(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = current_target() else {
        return 0;
    };
    // SAFETY: offset from the format file above.
    if unsafe { ctx.read_at::<u8>(EXIT_GROUP_DEAD) }.unwrap_or(0) == 0 {
        return 0;
    }
    emit(event(EventKind::ProcExit, tgid, tid));
    0
}
