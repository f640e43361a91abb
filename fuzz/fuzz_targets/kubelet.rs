#![no_main]
//! cargo fuzz run kubelet: see memtrace_user::fuzzing::kubelet.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::kubelet(data));
