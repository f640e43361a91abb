#![no_main]
//! cargo fuzz run go_binary: see memtrace_user::fuzzing::go_binary.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::go_binary(data));
