//! `memtrace top`: a live view of Go processes' memory while it happens.
//! Parses the arguments, starts the session and says how it ended; the
//! policy (refresh, draw, keys) is `front::top::policy`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::engine::session::{Session, Targets};
use crate::front::top::policy::{self, TopPolicy, Tui};
use crate::model::lens::Lens;
use crate::model::reporter::Collect;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Process to watch (repeatable; default: every Go process running now).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Lenses to trace, comma-separated; Tab switches between them.
    /// `goroutines` adds uprobes on every goroutine start and exit (without
    /// it the live count is read from the runtime).
    #[arg(long, value_delimiter = ',', default_value = "rss,alloc")]
    pub lens: Vec<Lens>,
    /// Seconds between refreshes.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub interval: f64,
    /// Where `s` saves reports (a directory per save).
    #[arg(long, default_value = "./memtrace-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub session: super::SessionArgs,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        bail!(
            "--interval must be at least 0.1 seconds, got {}",
            args.interval
        );
    }
    let mut lenses = args.lens.clone();
    lenses.dedup();
    let mut opts = args.session.options(lenses.clone());
    // With the screen up, the session's warnings go to its status line
    // (and to stderr once the terminal is restored), not across it.
    let tty = std::io::stdout().is_terminal();
    let said = tty.then(|| Arc::new(Collect::default()));
    if let Some(s) = &said {
        opts.reporter = s.clone();
    }
    // Dropped last, on every way out: the messages reach stderr after the
    // terminal is restored, and are not lost to an early error.
    let _print = PrintSaid(said.clone());
    let targets = if args.pids.is_empty() {
        Targets::Scan(policy::scan)
    } else {
        Targets::Pids(args.pids.clone())
    };
    let prepared = Session::prepare(opts, targets)?;
    if prepared.targets().is_empty() {
        bail!("no Go process to watch is running: start one, or give --pid PID");
    }
    let watching = prepared.targets().len();
    let mut session = prepared.start()?;
    let mut policy = TopPolicy::new(
        lenses,
        Duration::from_secs_f64(args.interval),
        args.out.clone(),
    );
    policy.said = said.clone();
    if tty {
        policy.tui = Some(Tui::start().context("cannot set up the terminal")?);
    } else {
        eprintln!(
            "memtrace: top: watching {} process(es); a block every {} s; Ctrl-C to stop",
            watching, args.interval
        );
    }
    let ended = session.run(&mut policy);
    // Restore the terminal before saying anything.
    drop(policy.tui.take());
    session.finish();
    let ended = ended?;
    eprintln!("memtrace: top: stopped ({ended}); every probe detached from {watching} process(es)");
    Ok(())
}

/// Prints what the session said while the screen was up, when dropped.
struct PrintSaid(Option<Arc<Collect>>);

impl Drop for PrintSaid {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            policy::print_said(s);
        }
    }
}
