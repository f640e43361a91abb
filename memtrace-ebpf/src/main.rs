//! memtrace's kernel side: uprobes on Go's allocators and tracepoints on the
//! memory syscalls. Every program first checks that the current process is a
//! target (the `TARGETS` map), captures the user stack into `STACKS` and sends a
//! fixed-size [`Event`] through the `EVENTS` ring buffer. Anything that cannot
//! be delivered is counted in `COUNTERS`, never silently lost.
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
