#![no_main]
//! cargo fuzz run go_memory: see memtrace_user::fuzzing::go_memory.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::go_memory(data));
