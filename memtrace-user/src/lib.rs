//! memtrace's user space, in layers: `kernel` (the eBPF object behind a
//! trait) → `engine` (a tracing session: targets, probes per binary,
//! windows) → `decode` and `aggregate` (records into per-lens aggregates,
//! the lenses in `lens`) → `symbolize` → `report` and `render` (profiles
//! and their formats). `cli` parses arguments and prints; `agent` is the
//! node agent's policy and HTTP API. Only `kernel::ebpf`, `engine::host`
//! and `remote` touch the kernel or other processes; the rest is pure and
//! unit-tested.

pub mod agent;
pub mod aggregate;
pub mod breakdown;
pub mod cgroup;
pub mod cli;
pub mod decode;
pub mod doctor;
pub mod engine;
pub mod error;
pub mod fuzzing;
pub mod gate;
pub mod gopclntab;
pub mod goruntime;
pub mod gtypes;
pub mod guard;
pub mod kernel;
pub mod launch;
pub mod lens;
pub mod memprof;
pub mod preflight;
pub mod procfs;
pub mod rangemap;
pub mod remote;
pub mod render;
pub mod report;
pub mod stack;
pub mod symbolize;
pub mod top;
