#![no_main]
//! cargo fuzz run procfs: see memtrace_user::fuzzing::procfs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memtrace_user::fuzzing::procfs(data));
