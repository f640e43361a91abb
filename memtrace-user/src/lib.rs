//! memtrace's user space. The pure parts (decode, aggregate, goruntime,
//! procfs parsers, symbolize, render) are unit-tested on their own; `loader`
//! and `cli::record` are the only code that talks to the kernel.

pub mod agent;
pub mod aggregate;
pub mod breakdown;
pub mod cgroup;
pub mod cli;
pub mod decode;
pub mod error;
pub mod gopclntab;
pub mod goruntime;
pub mod gtypes;
pub mod launch;
pub mod lens;
pub mod loader;
pub mod memprof;
pub mod preflight;
pub mod procfs;
pub mod render;
pub mod report;
pub mod symbolize;
