//! `memtrace record`: one window over the given processes (or a launched
//! command), then a report.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::engine::host::Procfs;
use crate::engine::session::{Session, Targets};
use crate::engine::Engine;
use crate::front::record::RecordPolicy;
use crate::kernel::ebpf::Ebpf;
use crate::model::ended::EndedBy;
use crate::model::lens::Lens;
use crate::model::profile::FrameMode;

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Process to trace (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Lenses to record, comma-separated (see the list below).
    #[arg(long, value_delimiter = ',', default_value = "rss")]
    pub lens: Vec<Lens>,
    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM, or every
    /// target exits).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Directory for the report.
    #[arg(long, default_value = "./memtrace-out")]
    pub out: PathBuf,
    /// alloc/heap lenses: the sampling rate (bytes per sample, on average)
    /// memtrace sets for the window when the target's runtime.MemProfileRate
    /// is 0, as it is in programs that do not link pprof. A nonzero rate in
    /// the target is used as it is. 1 samples every allocation.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub memprofile_rate: u64,
    /// How flame graphs and folded stacks name frames: by function
    /// (`main.handle`) or by source line (`main.handle server.go:42`).
    /// pprof profiles and summary.json always carry both.
    #[arg(long, value_enum, default_value_t = FrameMode::Func)]
    pub frames: FrameMode,
    #[command(flatten)]
    pub session: super::SessionArgs,
    /// Walk every event's stack instead of reusing a stack whose top (pc,
    /// frame pointer, six return addresses) matches one walked before:
    /// slower, and exact where stacks differ only deeper down.
    #[arg(long)]
    pub no_stack_cache: bool,
    /// Read a fault's frame only at the first page of a run, not at every
    /// merged page: cheaper and inexact (a function called again from
    /// another line at the same depth may count under the first call). For
    /// `cargo xtask bench`, which shows what the read costs.
    #[arg(long, hide = true)]
    pub unchecked_fault_runs: bool,
    /// Attach the fault probes but count no fault: each checks its target
    /// and returns. The rss lens then reports nothing; for `cargo xtask
    /// bench`, which shows what observing every fault costs by itself.
    #[arg(long, hide = true)]
    pub fault_probe_floor: bool,
    /// Leave the GC view's probes out (the report has no GC cycles); for
    /// `cargo xtask bench`, which shows what the GC view costs by itself.
    #[arg(long, hide = true)]
    pub no_gc_view: bool,
    /// Read no pprof labels; for `cargo xtask bench`, which shows what
    /// reading them costs.
    #[arg(long, hide = true)]
    pub no_labels: bool,
    #[command(flatten)]
    pub otlp: super::OtlpArgs,
    /// Command to launch and trace from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Exit status of `record` when the OOM killer killed a target.
pub const OOM_EXIT: u8 = 3;

pub fn run(args: RecordArgs) -> anyhow::Result<u8> {
    if args.pids.is_empty() == args.command.is_empty() {
        bail!("give either --pid PID (repeatable) or -- CMD ARGS, not both and not neither: e.g. `memtrace record --pid 1234`");
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds, got {d}");
        }
    }
    if args.memprofile_rate == 0 {
        bail!("--memprofile-rate must be at least 1 byte (1 samples every allocation)");
    }
    // A bad endpoint fails now, not after the window.
    let otlp = args.otlp.endpoint()?;
    let mut opts = args.session.options(args.lens.clone());
    opts.memprofile_rate = args.memprofile_rate;
    opts.tuning.stack_cache = !args.no_stack_cache;
    opts.tuning.recheck_runs = !args.unchecked_fault_runs;
    opts.tuning.fault_floor = args.fault_probe_floor;
    opts.tuning.gc_view = !args.no_gc_view;
    opts.tuning.labels = !args.no_labels;
    if args.fault_probe_floor {
        eprintln!("memtrace: --fault-probe-floor: faults are not counted (a measurement mode)");
    }
    opts.holds = true;
    let targets = if args.command.is_empty() {
        Targets::Pids(args.pids.clone())
    } else {
        Targets::Launch {
            argv: args.command.clone(),
            stdout: None,
        }
    };
    let prepared = Session::prepare(opts, targets)?;
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            args.out.display()
        )
    })?;
    let mut session = prepared.start()?;
    announce(session.engine(), &args);
    let mut policy = RecordPolicy::new(
        args.duration.map(Duration::from_secs_f64),
        args.out.clone(),
        args.frames,
    );
    let mut ended_by = session.run(&mut policy)?;
    if !policy.oom.is_empty() && ended_by == EndedBy::EveryTargetExited {
        ended_by = EndedBy::OomKill;
    }
    let mut engine = session.finish();
    // Symbolizing and rendering can take seconds on big profiles: say so
    // on a terminal.
    let progress = std::io::stderr().is_terminal();
    let step = Instant::now();
    if progress {
        eprint!(
            "memtrace: symbolizing {} distinct stacks...",
            engine.distinct_stacks()
        );
    }
    let report = engine.report(None, ended_by);
    if progress {
        eprint!(
            " {:.1} s\nmemtrace: rendering {} profiles...",
            step.elapsed().as_secs_f64(),
            report.profiles.len()
        );
    }
    let step = Instant::now();
    let written = crate::render::report::write_report(&args.out, &report, args.frames);
    if progress {
        eprintln!(" {:.1} s", step.elapsed().as_secs_f64());
    }
    let written = written?;
    super::terminal::print_record(&report, &written, engine.targets());
    let exported = otlp.map_or(Ok(()), |e| export(&e, &report, &args.out));
    if policy.oom.is_empty() {
        return Ok(u8::from(exported.is_err()));
    }
    say_oom_kills(&report, &policy.oom);
    Ok(OOM_EXIT)
}

/// Says which targets the OOM killer chose, and where each one's report is.
fn say_oom_kills(report: &crate::model::report::Report, oom: &[(u32, Result<PathBuf, String>)]) {
    for (pid, written) in oom {
        let cgroup = report
            .summary
            .targets
            .iter()
            .find(|t| t.pid == *pid)
            .and_then(|t| t.cgroup.as_ref())
            .map(|c| format!(" ({})", c.describe(crate::render::report::human_bytes)))
            .unwrap_or_default();
        eprintln!(
            "memtrace: pid {pid} was killed by the OOM killer{cgroup}; {}",
            match written {
                Ok(dir) => format!("its report is in {}", dir.display()),
                Err(e) => e.clone(),
            }
        );
    }
}

/// Sends the report's profiles to the OTLP endpoint (a few tries); a
/// failure is said with where the report is.
fn export(
    e: &crate::front::push::otlp::Endpoint,
    report: &crate::model::report::Report,
    out: &std::path::Path,
) -> Result<(), ()> {
    use crate::render::otlp::{self, Origin};
    let targets = &report.summary.targets;
    let mut origin = targets.first().map(Origin::of_target).unwrap_or_default();
    if targets.len() > 1 {
        // One resource for several processes: no process's own attributes.
        origin = Origin {
            service: Some(origin.service_name()),
            ..Origin::default()
        };
    }
    origin.host = otlp::host_name();
    let req = otlp::request(&[(origin, &report.profiles)]);
    let sent: usize = req
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .map(|s| s.profiles.len())
        .sum();
    let body = crate::front::push::otlp::body(&req);
    match e.send_now(&body, 3) {
        Ok(()) => {
            eprintln!(
                "memtrace: sent {sent} OTLP profiles ({}) to {}",
                crate::render::report::human_bytes(body.len() as u64),
                e.url
            );
            Ok(())
        }
        Err(why) => {
            eprintln!(
                "memtrace: error: the OTLP export failed: {why}; the report in {} is complete",
                out.display()
            );
            Err(())
        }
    }
}

fn announce(engine: &Engine<Ebpf, Procfs>, args: &RecordArgs) {
    let opts = engine.options();
    let names: Vec<&str> = opts.lenses.iter().map(|l| l.name()).collect();
    let exact = opts.has(Lens::AllocExact);
    for t in engine.targets() {
        let b = &t.bin;
        eprintln!(
            "memtrace: tracing pid {} ({}, {}{}{}) with lens {}{}",
            t.pid,
            t.exe.display(),
            b.module
                .as_deref()
                .map_or(String::new(), |m| format!("{m}, ")),
            b.go_version,
            match (b.stripped, b.pie) {
                (true, true) => ", stripped, PIE",
                (true, false) => ", stripped",
                (false, true) => ", PIE",
                (false, false) => "",
            },
            names.join(","),
            if exact {
                " (alloc-exact probes every allocation: expect a large slowdown)"
            } else {
                ""
            }
        );
    }
    if exact {
        eprintln!("memtrace: {} allocation uprobes attached", engine.uprobes());
    }
    eprintln!(
        "memtrace: {}; Ctrl-C to stop",
        match args.duration {
            Some(d) => format!("stopping after {d} s"),
            None => "running until every target exits".to_string(),
        }
    );
}
