//! memtrace's user space, in layers: `kernel` (the eBPF object behind a
//! trait) → `engine` (a tracing session: targets, probes per binary,
//! windows) → `decode` and `aggregate` (records into per-lens aggregates,
//! the lenses in `lens`) → `symbolize` → `report` and `render` (profiles
//! and their formats). `cli` parses arguments and prints; `agent` is the
//! node agent's policy and HTTP API. Only `kernel::ebpf`, `engine::host`
//! and `remote` touch the kernel or other processes; the rest is pure and
//! unit-tested.

pub mod binary;
pub mod cli;
pub mod engine;
pub mod front;
pub mod fuzzing;
pub mod host;
pub mod kernel;
pub mod lens;
pub mod model;
pub mod render;
