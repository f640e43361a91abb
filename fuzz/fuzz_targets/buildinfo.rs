#![no_main]
//! cargo fuzz run buildinfo: see memtrace_user::fuzzing::buildinfo.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::buildinfo(data));
