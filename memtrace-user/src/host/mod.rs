//! The host: `/proc`, target memory, memory cgroups, launching and
//! guarding targets, and the checks a host must pass. Below everything that
//! knows about Go.

pub mod breakdown;
pub mod cgroup;
pub mod clock;
pub mod guard;
pub mod launch;
pub mod preflight;
pub mod procfs;
pub mod remote;
