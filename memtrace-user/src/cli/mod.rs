//! Command line: one module per subcommand, dispatched from [`Cli::execute`].

pub mod agent;
mod diff;
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
    /// Run unattended on a host (e.g. as a DaemonSet): trace every Go process,
    /// keep rolling rss and goroutines profiles, serve /metrics and
    /// /profiles over HTTP, and snapshot processes whose RSS keeps growing.
    Agent(agent::AgentArgs),
}

impl Cli {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.command {
            Commands::Record(args) => record::run(args),
            Commands::Diff(args) => diff::run(args),
            Commands::Agent(args) => agent::run(args),
        }
    }
}
