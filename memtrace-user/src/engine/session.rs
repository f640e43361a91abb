//! One way to start a session, for every front end (`record`, `top`,
//! `gate`, `agent`): the host check, the guardian fork (while memtrace has
//! one thread, which is checked here rather than kept as a comment), the
//! event loop and its stop signals, the targets resolved and vetted, the
//! probes loaded, then [`Session::run`] with a policy and
//! [`Session::finish`].
//!
//! Starting is two steps, [`Session::prepare`] and [`Prepared::start`], so
//! a front end can look at the resolved targets before anything is
//! attached (the gate refuses a heap metric a binary cannot give); a
//! [`Prepared`] dropped without starting kills a held command before it
//! ran anything.

use std::os::fd::OwnedFd;

use super::host::Procfs;
use super::run::{self, Policy, StopSignals};
use super::setup::{self, SetupError};
use super::{Engine, Options, TargetSpec};
use crate::host::guard::Guardian;
use crate::host::launch::Gated;
use crate::kernel::ebpf::Ebpf;
use crate::model::ended::EndedBy;

/// What a session traces from the start.
pub enum Targets {
    /// Running processes, by pid.
    Pids(Vec<u32>),
    /// Processes a scan finds once the host is checked (`top`: every Go
    /// process running).
    Scan(fn(&Options) -> Vec<TargetSpec>),
    /// A command, held before its first instruction until the session runs
    /// (its standard output to `stdout` when given).
    Launch {
        argv: Vec<String>,
        stdout: Option<OwnedFd>,
    },
    /// None yet: the policy adds what discovery finds.
    Discover,
}

/// A session whose targets are resolved and vetted, nothing attached yet.
pub struct Prepared {
    opts: Options,
    specs: Vec<TargetSpec>,
    gate: Option<Gated>,
    guardian: Option<Guardian>,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<StopSignals>,
}

/// A running session: the engine with its probes, a held command to
/// release, the event loop and the stop signals caught since start-up.
pub struct Session {
    engine: Engine<Ebpf, Procfs>,
    gate: Option<Gated>,
    rt: tokio::runtime::Runtime,
    stop: Option<StopSignals>,
}

/// The threads this process runs now (from `/proc/self/status`).
fn threads() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

impl Session {
    /// Checks the host, forks the guardian, starts the event loop (SIGINT
    /// and SIGTERM are caught from here on) and resolves the targets.
    pub fn prepare(opts: Options, targets: Targets) -> Result<Prepared, SetupError> {
        setup::check_host(&opts)?;
        // The guardian is a fork: a second thread would be copied half-way.
        if let Some(n) = threads().filter(|&n| n > 1) {
            return Err(SetupError::Threads(n));
        }
        let guardian = Guardian::spawn().map_err(SetupError::Guardian)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SetupError::EventLoop)?;
        let stop = {
            let _in = rt.enter();
            StopSignals::new().map_err(SetupError::EventLoop)?
        };
        let (specs, gate) = match targets {
            Targets::Pids(pids) => (
                pids.iter()
                    .map(|&p| setup::running(p))
                    .collect::<Result<_, _>>()?,
                None,
            ),
            Targets::Scan(scan) => (scan(&opts), None),
            Targets::Launch { argv, stdout } => {
                let (spec, gate) = setup::launch(&argv, stdout)?;
                (vec![spec], Some(gate))
            }
            Targets::Discover => (Vec::new(), None),
        };
        Ok(Prepared {
            opts,
            specs,
            gate,
            guardian: Some(guardian),
            rt: Some(rt),
            stop: Some(stop),
        })
    }

    /// [`Session::prepare`] and [`Prepared::start`] in one.
    pub fn start(opts: Options, targets: Targets) -> Result<Session, SetupError> {
        Self::prepare(opts, targets)?.start()
    }

    pub fn engine(&self) -> &Engine<Ebpf, Procfs> {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine<Ebpf, Procfs> {
        &mut self.engine
    }

    /// Starts the window's clock, lets a held command run, and drives
    /// `policy` until it or a signal stops the session. Once per session.
    pub fn run<P: Policy<Ebpf, Procfs>>(&mut self, policy: &mut P) -> std::io::Result<EndedBy> {
        let stop = self
            .stop
            .take()
            .ok_or_else(|| std::io::Error::other("a session runs once"))?;
        self.engine.begin();
        if let Some(g) = self.gate.take() {
            g.release();
        }
        self.rt
            .block_on(run::drive_until(&mut self.engine, policy, stop))
    }

    /// Detaches every probe and undoes what was written into targets
    /// (telling the guardian all is restored); the engine stays for the
    /// report.
    pub fn finish(mut self) -> Engine<Ebpf, Procfs> {
        self.engine.finish();
        self.engine.release_guardian();
        self.engine
    }
}

impl Prepared {
    /// The resolved targets, before anything is attached.
    pub fn targets(&self) -> &[TargetSpec] {
        &self.specs
    }

    /// Vets the targets, loads the probes and adds the targets. On failure
    /// a held command is killed before it ran anything.
    pub fn start(mut self) -> Result<Session, SetupError> {
        let guardian = self.guardian.take().expect("set until started");
        let (engine, gate) = setup::start(&self.opts, &self.specs, self.gate.take(), guardian)?;
        Ok(Session {
            engine,
            gate,
            rt: self.rt.take().expect("set until started"),
            stop: self.stop.take(),
        })
    }
}

impl Drop for Prepared {
    /// Not started: a held command is killed before it ran anything.
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.abandon();
        }
    }
}
