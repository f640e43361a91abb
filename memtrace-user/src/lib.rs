//! memtrace's user space, in ten layers, bottom to top: `model` (what every
//! layer shares), `host` (/proc, target memory, cgroups), `binary` (what
//! Go executables hold, and symbolization), `kernel` (the eBPF object
//! behind a trait, and its records decoded), `lens` (the aggregators),
//! `render` (profiles and their formats), `engine` (a tracing session),
//! `front` (the agent, gate, top and doctor policies), `cli` (parsing and
//! printing) and `fuzzing`. Each imports only from the layers below it
//! (`tests/architecture.rs`). Only `kernel::ebpf`, `engine::host` and
//! `host::remote` touch the kernel or other processes; the rest is pure and
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
