#![no_main]
//! cargo fuzz run pprof: see memtrace_user::fuzzing::pprof.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::pprof(data));
