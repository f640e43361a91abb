//! Command line: one module per subcommand, dispatched from [`Cli::execute`].

pub mod agent;
mod diff;
mod doctor;
mod gate;
pub mod record;
mod terminal;
pub use terminal::drops;
mod top;

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
    #[command(after_help = lenses_help())]
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
    Agent(Box<agent::AgentArgs>),
    /// A live view of Go processes' memory: RSS and its trend, growth, the
    /// top growing stacks, goroutines and GC (q quits, s saves, Tab lens).
    Top(top::TopArgs),
    /// Check that this host can trace (each check with its fix), and what
    /// each lens can do with a binary or process (exit 0: the host can trace).
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (e.g. `memtrace completions bash >
    /// /etc/bash_completion.d/memtrace`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (one per subcommand) into a directory; `cargo xtask
    /// man` runs this.
    #[command(hide = true)]
    Man {
        /// Where to write memtrace.1, memtrace-record.1, ...
        out: std::path::PathBuf,
    },
}

/// What every tracing subcommand (`record`, `top`, `agent`) takes for its
/// session, turned into the engine's options in one place.
#[derive(Debug, Default, clap::Args)]
pub struct SessionArgs {
    /// pprof label keys (comma-separated) whose values split the flame
    /// graphs and folded stacks: a `[KEY=value]` root frame each
    /// (`[KEY=[no labels]]` for what had no such label).
    #[arg(long, value_delimiter = ',', value_name = "KEY", value_parser = label_key)]
    pub split_by_label: Vec<String>,
    /// Log the eBPF programs' rare paths to stderr (`memtrace: ebpf: ...`):
    /// why a stack walk failed, a hold not taken, an unreadable label set,
    /// an unknown probe cookie. Also on when RUST_LOG mentions `ebpf`. Off,
    /// the log costs nothing: the kernel's verifier drops it.
    #[arg(long)]
    pub ebpf_log: bool,
    /// Make every stack walk fail with this errno (for tests of how a
    /// failed walk is counted, shown and logged).
    #[arg(long, hide = true, value_name = "ERRNO")]
    pub inject_stack_errno: Option<u32>,
}

impl SessionArgs {
    /// The engine's options for `lenses` with these flags.
    pub fn options(&self, lenses: Vec<crate::model::lens::Lens>) -> crate::engine::Options {
        let mut opts = crate::engine::Options::new(lenses);
        opts.split_by_label = self.split_by_label.clone();
        opts.tuning.ebpf_log =
            self.ebpf_log || rust_log_asks_for_ebpf(std::env::var("RUST_LOG").ok());
        opts.tuning.stack_walk_errno = self.inject_stack_errno.unwrap_or(0);
        opts
    }
}

/// Whether `RUST_LOG` asks for the eBPF programs' log (it names `ebpf`,
/// e.g. `RUST_LOG=ebpf` or `RUST_LOG=warn,memtrace::ebpf=warn`).
fn rust_log_asks_for_ebpf(rust_log: Option<String>) -> bool {
    rust_log.is_some_and(|v| v.to_ascii_lowercase().contains("ebpf"))
}

/// Where OTLP profiles go (`record` and `agent`).
#[derive(Debug, Default, clap::Args)]
pub struct OtlpArgs {
    /// Send the profiles as OTLP (opentelemetry.proto.profiles.v1development)
    /// to this OTLP/HTTP endpoint, e.g. http://collector:4318 (the path
    /// /v1development/profiles is added to a URL without one); https
    /// uses TLS.
    #[arg(long, value_name = "URL")]
    pub otlp: Option<String>,
    /// A header for every OTLP request, KEY=VALUE (repeatable), e.g.
    /// `Authorization=Bearer TOKEN`; OTEL_EXPORTER_OTLP_HEADERS adds more.
    #[arg(long = "otlp-header", value_name = "KEY=VALUE", requires = "otlp")]
    pub otlp_headers: Vec<String>,
}

impl OtlpArgs {
    /// The endpoint, if `--otlp` was given.
    pub fn endpoint(&self) -> anyhow::Result<Option<crate::front::push::otlp::Endpoint>> {
        let Some(url) = &self.otlp else {
            return Ok(None);
        };
        let mut headers = self.otlp_headers.clone();
        headers.extend(crate::front::push::otlp::env_headers(|k| {
            std::env::var(k).ok()
        }));
        Ok(Some(crate::front::push::otlp::Endpoint::new(
            url, &headers,
        )?))
    }
}

/// A pprof label key for `--split-by-label`.
fn label_key(s: &str) -> Result<String, String> {
    let k = s.trim();
    if k.is_empty() || k.contains(['=', ';', ',']) || k.chars().any(char::is_whitespace) {
        return Err(format!(
            "{s:?} is not a label key: give the key of a pprof label, such as route"
        ));
    }
    if k.chars().count() > crate::model::labels::MAX_CHARS {
        return Err(format!(
            "label key {s:?} is longer than {} characters",
            crate::model::labels::MAX_CHARS
        ));
    }
    Ok(k.to_string())
}

/// The lenses, each with its question and cost, for `--help`.
fn lenses_help() -> String {
    format!("Lenses (--lens):\n{}", crate::lens::help_table())
}

impl Cli {
    /// Runs the command; `Ok` carries its exit code.
    pub fn execute(self) -> anyhow::Result<u8> {
        match self.command {
            Commands::Record(args) => record::run(args),
            Commands::Diff(args) => diff::run(args).map(|()| 0),
            Commands::Gate(args) => gate::run(args),
            Commands::Agent(args) => agent::run(*args).map(|()| 0),
            Commands::Doctor(args) => doctor::run(args),
            Commands::Top(args) => top::run(args).map(|()| 0),
            Commands::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "memtrace", &mut std::io::stdout());
                Ok(0)
            }
            Commands::Man { out } => {
                use anyhow::Context as _;
                std::fs::create_dir_all(&out)
                    .with_context(|| format!("cannot create {}", out.display()))?;
                clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &out)
                    .with_context(|| format!("cannot write man pages into {}", out.display()))?;
                Ok(0)
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_turns_the_ebpf_log_on_only_when_it_names_it() {
        assert!(rust_log_asks_for_ebpf(Some("ebpf".into())));
        assert!(rust_log_asks_for_ebpf(Some(
            "warn,memtrace::eBPF=debug".into()
        )));
        assert!(!rust_log_asks_for_ebpf(Some("debug".into())));
        assert!(!rust_log_asks_for_ebpf(None));
    }

    #[test]
    fn the_session_flags_reach_the_options() {
        let args = SessionArgs {
            ebpf_log: true,
            inject_stack_errno: Some(14),
            ..SessionArgs::default()
        };
        let opts = args.options(vec![crate::model::lens::Lens::Rss]);
        assert!(opts.tuning.ebpf_log);
        assert_eq!(opts.tuning.stack_walk_errno, 14);
        let off = SessionArgs::default().options(vec![]);
        assert_eq!(off.tuning.stack_walk_errno, 0);
    }
}
