//! The loop every policy shares: take records when the ring buffer says
//! they wait (and at least every tick, since producers batch their
//! wakeups), tick the engine, ask the policy whether to go on, and stop on
//! SIGINT or SIGTERM.

use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::{Engine, Host, Lifecycle};
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;

/// What a policy wants after a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// End the session, saying why.
    Stop(EndedBy),
}

/// A way of using the engine: `record`, `agent`, `gate`, `top`.
pub trait Policy<K: Kernel, H: Host> {
    /// Processes that exec'd or exited (discovery), after each drain.
    fn on_lifecycle(&mut self, _engine: &mut Engine<K, H>, _events: Vec<Lifecycle>) {}

    /// After each tick (~100 ms), with the targets that exited since the
    /// last one.
    fn on_tick(&mut self, engine: &mut Engine<K, H>, exited: &[u32]) -> Step;
}

/// How often the engine ticks.
pub const TICK: Duration = Duration::from_millis(100);

/// SIGINT and SIGTERM, caught from the moment this is made: made before a
/// long start-up (loading the probes, attaching to every process), a
/// signal during it ends the session cleanly once [`drive_until`] runs,
/// instead of killing the process with the default action.
pub struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Must be called inside the Tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Runs `policy` over `engine` until the policy or a signal (caught since
/// `stop` was made) stops it; returns what stopped it.
pub async fn drive_until<K, H, P>(
    engine: &mut Engine<K, H>,
    policy: &mut P,
    mut stop: StopSignals,
) -> std::io::Result<EndedBy>
where
    K: Kernel,
    H: Host,
    P: Policy<K, H>,
{
    let mut ready = match engine.kernel.ready_fd() {
        // SAFETY: the descriptor is owned by the AsyncFd for its whole life.
        Some(fd) => Some(
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = async {
                match ready.as_mut() {
                    Some(fd) => fd.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                guard?.clear_ready();
                let events = engine.drain();
                policy.on_lifecycle(engine, events);
            }
            _ = tick.tick() => {
                let events = engine.drain();
                policy.on_lifecycle(engine, events);
                let exited = engine.tick();
                if let Step::Stop(why) = policy.on_tick(engine, &exited) {
                    return Ok(why);
                }
            }
            _ = stop.int.recv() => return Ok(EndedBy::SigInt),
            _ = stop.term.recv() => return Ok(EndedBy::SigTerm),
        }
    }
}
