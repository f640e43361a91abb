//! memtrace's kernel side: uprobes on the Go runtime (allocators, goroutine
//! creation and exit, GC, and the points where a target holds itself for
//! user space) and tracepoints on page faults, the memory syscalls and
//! process exec/exit. Every program first checks that the current process
//! is a target (the `TARGETS` map), then sends an [`Event`] through the
//! `EVENTS` ring buffer, with the user stack inline or as a reference to
//! one sent before (see `probes/mod.rs`). Anything that cannot be delivered
//! is counted in `COUNTERS`, never silently lost.
//!
//! [`Event`]: memtrace_common::Event
#![no_std]
#![no_main]

mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
