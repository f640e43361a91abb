//! Setting a session up: finding and vetting the processes to trace, a
//! command held before its first instruction, and an engine with the
//! probes in place; [`super::session::Session`] puts them in order for
//! every front end.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::discover::Process;
use super::host::Procfs;
use super::{Engine, EngineError, Options, TargetSpec};
use crate::binary::goruntime::GoBinary;
use crate::engine::BinaryId;
use crate::host::guard::Guardian;
use crate::host::launch::{self, Gated};
use crate::kernel::{ebpf::Ebpf, KernelError};
use crate::model::error::{EnvError, TargetError};
use crate::model::lens::Lens;

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The guardian is forked, so memtrace must have one thread then.
    #[error("internal error: the guardian must be forked while memtrace has one thread, and it has {0}; please report this")]
    Threads(u64),
    #[error("cannot start the guardian process: {0}")]
    Guardian(std::io::Error),
    #[error("cannot start the event loop: {0}")]
    EventLoop(std::io::Error),
}

/// A running process, vetted.
pub fn running(pid: u32) -> Result<TargetSpec, TargetError> {
    let p = Process::open(pid)?;
    Ok(p.spec(Arc::new(p.go_binary()?)))
}

/// Refuses lenses that need data symbols a binary lacks, before anything is
/// attached (or a launched program left waiting).
pub fn vet(spec: &TargetSpec, opts: &Options) -> Result<(), TargetError> {
    let bin = &spec.bin;
    let needs: &[(bool, Option<u64>, &str, &str)] = &[
        (
            opts.has(Lens::Goroutines) && !spec.launched,
            bin.allgs,
            "runtime.allgs",
            "goroutines lens (attach mode)",
        ),
        (
            opts.sampled(),
            bin.mbuckets,
            "runtime.mbuckets",
            "alloc and heap lenses",
        ),
    ];
    match needs.iter().find(|n| n.0 && n.1.is_none()) {
        Some((_, _, symbol, needed_by)) => Err(bin.missing(symbol, needed_by)),
        None => Ok(()),
    }
}

/// A command, resolved and held before exec (its standard output to
/// `stdout` when given).
pub fn launch(
    command: &[String],
    stdout: Option<OwnedFd>,
) -> Result<(TargetSpec, Gated), TargetError> {
    let path = launch::resolve(&command[0])?;
    let bin = GoBinary::open(&path)?;
    let meta = std::fs::metadata(&path).map_err(|e| TargetError::Read {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let gate = launch::spawn_gated(&path, command, stdout)?;
    Ok((
        TargetSpec {
            pid: gate.pid,
            exe: path.clone(),
            attach_path: path,
            binary: BinaryId::of(&meta),
            bin: Arc::new(bin),
            launched: true,
        },
        gate,
    ))
}

/// Checks that this host can run the session's probes (privileges, BTF,
/// tracefs, tracepoints): first, before any target is looked at.
pub fn check_host(opts: &Options) -> Result<(), EnvError> {
    let paths: Vec<String> = opts.tracepoints().iter().map(|t| t.path()).collect();
    crate::host::preflight::check(&paths.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Loads the probes and adds `specs` (vetted first), with `guardian`
/// watching what is written into them. On failure a held command is killed
/// before it ran anything.
pub fn start(
    opts: &Options,
    specs: &[TargetSpec],
    gate: Option<Gated>,
    guardian: Guardian,
) -> Result<(Engine<Ebpf, Procfs>, Option<Gated>), SetupError> {
    // The guardian outlives a failure until the held command is gone: that
    // child, forked but never exec'd, holds the guardian's pipe open.
    let mut guardian = Some(guardian);
    let mut go = || -> Result<Engine<Ebpf, Procfs>, SetupError> {
        let tracepoints = opts.tracepoints();
        for s in specs {
            vet(s, opts)?;
        }
        let kernel = Ebpf::load_with(
            &tracepoints,
            &crate::host::preflight::tracefs_dir(),
            opts.tuning,
            opts.reporter.clone(),
        )?;
        let mut engine = Engine::new(kernel, Procfs, opts.clone());
        engine.set_guardian(guardian.take().expect("set once"));
        for s in specs {
            engine.add(s.clone())?;
        }
        Ok(engine)
    };
    match go() {
        Ok(e) => Ok((e, gate)),
        Err(e) => {
            if let Some(g) = gate {
                g.abandon();
            }
            drop(guardian);
            Err(e)
        }
    }
}
