//! Command line: one module per subcommand, dispatched from [`Cli::execute`].

pub mod agent;
mod diff;
mod gate;
pub mod record;
mod terminal;

use clap::{Parser, Subcommand};

/// memtrace: find the Go code that makes memory grow, from outside the process.
#[derive(Debug, Parser)]
#[command(name = "memtrace", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Trace running Go processes (--pid) or a command (-- CMD ARGS) and write
    /// flame graphs, folded stacks, pprof profiles and summary.json.
    Record(record::RecordArgs),
    /// Compare two reports (or folded files): a differential flame graph,
    /// growth in red and shrinkage in blue, and the stacks that changed most.
    Diff(diff::DiffArgs),
    /// Compare two builds' memory growth per unit of load and fail when the
    /// candidate's regressed (exit 0 pass, 1 regression, 2 error).
    Gate(gate::GateArgs),
    /// Run unattended on a host (e.g. as a DaemonSet): trace every Go process,
    /// keep rolling rss and goroutines profiles, serve /metrics and
    /// /profiles over HTTP, and snapshot processes whose RSS keeps growing.
    Agent(agent::AgentArgs),
}

impl Cli {
    /// Runs the command; `Ok` carries its exit code.
    pub fn execute(self) -> anyhow::Result<u8> {
        match self.command {
            Commands::Record(args) => record::run(args).map(|()| 0),
            Commands::Diff(args) => diff::run(args).map(|()| 0),
            Commands::Gate(args) => gate::run(args),
            Commands::Agent(args) => agent::run(args).map(|()| 0),
        }
    }

    /// The exit code of an error: 2 for `gate` (whose 1 means a
    /// regression), 1 for the others.
    pub fn error_code(&self) -> u8 {
        match self.command {
            Commands::Gate(_) => 2,
            _ => 1,
        }
    }
}
