//! `memtrace record`: attach, stream events until the window ends, then
//! symbolize and write the report.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use memtrace_common::Counter;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::aggregate::{Aggregator, AllocAgg, MmapAgg};
use crate::decode::decode;
use crate::goruntime::GoBinary;
use crate::launch;
use crate::lens::Lens;
use crate::loader::Tracer;
use crate::preflight;
use crate::procfs;
use crate::render::summary::{self, Counters, SizePercentiles, Summary};
use crate::report::{self, Extras};
use crate::symbolize::{Image, Symbolizer};

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Process to trace (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Lenses to record, comma-separated: mmap, alloc-exact (alloc-exact
    /// probes every heap allocation: a debugging mode that slows the target
    /// many times over).
    #[arg(long, value_delimiter = ',', default_value = "mmap")]
    pub lens: Vec<Lens>,
    /// Stop after this many seconds (default: until Ctrl-C, SIGTERM, or every
    /// target exits).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Directory for the report.
    #[arg(long, default_value = "./memtrace-out")]
    pub out: PathBuf,
    /// Command to launch and trace from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

struct Target {
    pid: u32,
    exe: PathBuf,
    go_version: String,
    image: Image,
    launched: bool,
    exited: Option<i32>,
}

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    if args.pids.is_empty() == args.command.is_empty() {
        bail!("give either --pid PID (repeatable) or -- CMD ARGS, not both and not neither: e.g. `memtrace record --pid 1234`");
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds, got {d}");
        }
    }
    let mut lenses = args.lens.clone();
    lenses.sort();
    lenses.dedup();
    let want_alloc = lenses.contains(&Lens::AllocExact);
    let want_mmap = lenses.contains(&Lens::Mmap);

    let mut tracepoints = Vec::new();
    if want_mmap {
        tracepoints.extend([
            "syscalls/sys_enter_mmap",
            "syscalls/sys_exit_mmap",
            "syscalls/sys_enter_munmap",
        ]);
    }
    preflight::check(&tracepoints)?;

    // Resolve and vet every target before touching the kernel.
    let mut targets = Vec::new();
    let mut bins = Vec::new();
    let mut gate = None;
    if args.command.is_empty() {
        for &pid in &args.pids {
            procfs::check_pid(pid)?;
            let exe = procfs::exe_path(pid)?;
            // /proc/PID/exe reaches the file even in another mount namespace
            // or after it was deleted.
            let via = procfs::proc_dir(pid).join("exe");
            let mut bin = GoBinary::open(&via).map_err(|e| relabel(e, &via, &exe))?;
            bin.path = exe.clone();
            let maps = procfs::read_maps(pid);
            targets.push(Target {
                pid,
                exe: exe.clone(),
                go_version: bin.go_version.clone(),
                image: Image {
                    exe: exe.clone(),
                    maps,
                },
                launched: false,
                exited: None,
            });
            bins.push((bin, via, pid));
        }
    } else {
        let path = launch::resolve(&args.command[0])?;
        let bin = GoBinary::open(&path)?;
        let g = launch::spawn_gated(&path, &args.command)?;
        targets.push(Target {
            pid: g.pid,
            exe: path.clone(),
            go_version: bin.go_version.clone(),
            image: Image {
                exe: path.clone(),
                maps: None,
            },
            launched: true,
            exited: None,
        });
        bins.push((bin, path, g.pid));
        gate = Some(g);
    }

    let setup = || -> anyhow::Result<(Tracer, RingBuf<MapData>)> {
        let mut tracer = Tracer::load()?;
        if want_mmap {
            tracer.attach_syscalls()?;
        }
        for (bin, attach_path, pid) in &bins {
            tracer.add_target(*pid)?;
            if want_alloc {
                tracer.attach_alloc(bin, attach_path, *pid)?;
            }
        }
        let ring = tracer.take_ring()?;
        Ok((tracer, ring))
    };
    let (mut tracer, ring) = match setup() {
        Ok(v) => v,
        Err(e) => {
            if let Some(g) = gate {
                // SAFETY: signalling our own gated child.
                unsafe { libc::kill(g.pid as i32, libc::SIGKILL) };
                launch::try_wait(g.pid);
            }
            return Err(e);
        }
    };

    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create output directory {}: choose another with --out",
            args.out.display()
        )
    })?;

    let lens_names: Vec<&str> = lenses.iter().map(|l| l.name()).collect();
    for t in &targets {
        eprintln!(
            "memtrace: tracing pid {} ({}, {}) with lens {}{}",
            t.pid,
            t.exe.display(),
            t.go_version,
            lens_names.join(","),
            if want_alloc {
                " (alloc-exact probes every allocation: expect a large slowdown)"
            } else {
                ""
            }
        );
    }
    if want_alloc {
        eprintln!("memtrace: {} allocation uprobes attached", tracer.uprobes);
    }
    eprintln!(
        "memtrace: {}; Ctrl-C to stop",
        match args.duration {
            Some(d) => format!("stopping after {d} s"),
            None => "running until every target exits".to_string(),
        }
    );

    let mut agg = Aggregator {
        alloc: want_alloc.then(AllocAgg::default),
        mmap: want_mmap.then(MmapAgg::default),
        events: 0,
    };
    let started = Instant::now();
    if let Some(g) = gate {
        g.release();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut decode_errors = 0u64;
    let ended_by = rt.block_on(stream(
        &mut tracer,
        ring,
        &mut agg,
        &mut targets,
        args.duration.map(Duration::from_secs_f64),
        &mut decode_errors,
    ))?;
    let duration_secs = started.elapsed().as_secs_f64();
    let counters = tracer.counters();

    // Report.
    let images: HashMap<u32, (String, Image)> = targets
        .iter()
        .map(|t| {
            let name = t
                .exe
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            (t.pid, (name, t.image.clone()))
        })
        .collect();
    let target_desc = targets
        .iter()
        .map(|t| format!("{} (pid {})", images[&t.pid].0, t.pid))
        .collect::<Vec<_>>()
        .join(", ");
    let stack_of = |id: u32| tracer.stack(id);
    let mut sym = Symbolizer::default();
    let mut lens_summaries = BTreeMap::new();
    let mut written = Vec::new();
    for lens in &lenses {
        let (cells, extra): (_, Extras) = match lens {
            Lens::AllocExact => {
                let a = agg.alloc.as_ref().expect("alloc lens enabled");
                let h = &a.sizes;
                let pct = if h.is_empty() {
                    SizePercentiles::default()
                } else {
                    SizePercentiles {
                        p50: h.value_at_quantile(0.5),
                        p90: h.value_at_quantile(0.9),
                        p99: h.value_at_quantile(0.99),
                        max: h.max(),
                        mean: h.mean(),
                    }
                };
                (
                    a.by_stack.clone(),
                    BTreeMap::from([("size_percentiles".to_string(), serde_json::to_value(pct)?)]),
                )
            }
            Lens::Mmap => {
                let m = agg.mmap.as_ref().expect("mmap lens enabled");
                (
                    m.by_stack(),
                    BTreeMap::from([(
                        "unmapped_bytes".to_string(),
                        serde_json::json!(m.unmapped_bytes),
                    )]),
                )
            }
            _ => unreachable!("only implemented lenses parse"),
        };
        let p = report::build_profile(
            *lens,
            &cells,
            &images,
            &stack_of,
            &mut sym,
            duration_secs,
            target_desc.clone(),
        );
        let w = report::write_profile(&args.out, &p)?;
        lens_summaries.insert(lens.name().to_string(), summary::lens_summary(&p, extra));
        written.push((p, w));
    }
    let dropped = counters[Counter::RingbufDrops as usize];
    let summary = Summary {
        targets: targets
            .iter()
            .map(|t| summary::Target {
                pid: t.pid,
                exe: t.exe.display().to_string(),
                go_version: t.go_version.clone(),
            })
            .collect(),
        lenses: lens_summaries,
        dropped_events: dropped,
        duration_secs,
        counters: Counters {
            ringbuf_drops: dropped,
            stack_errors: counters[Counter::StackErrors as usize],
            mmap_unpaired: counters[Counter::MmapUnpaired as usize],
            alloc_probe_hits: counters[Counter::AllocHits as usize],
            unresolved_frames: sym.unresolved,
            decode_errors,
            events: agg.events,
        },
        ended_by: ended_by.clone(),
    };
    let summary_path = report::write_summary(&args.out, &summary)?;
    drop(tracer); // detaches every probe

    eprintln!(
        "memtrace: stopped ({ended_by}) after {duration_secs:.1} s: {} events, {dropped} dropped, {} stack errors",
        agg.events, summary.counters.stack_errors
    );
    if dropped > 0 {
        eprintln!("memtrace: warning: {dropped} events were dropped (ring buffer full); totals are low by that many events");
    }
    for t in &targets {
        if let Some(code) = t.exited {
            eprintln!("memtrace: pid {} exited with status {code}", t.pid);
        }
    }
    for (p, w) in &written {
        println!(
            "{} lens: total {} in {} stacks",
            p.lens,
            fmt_value(p.unit, p.total()),
            p.samples.len()
        );
        for (i, s) in p.samples.iter().take(3).enumerate() {
            println!(
                "  #{} {:>12}  {}",
                i + 1,
                fmt_value(p.unit, s.value),
                report::short_stack(&s.frames, 4)
            );
        }
        println!(
            "  wrote {}, {}, {}",
            w.svg.display(),
            w.folded.display(),
            w.pprof.display()
        );
    }
    println!("wrote {}", summary_path.display());
    Ok(())
}

fn fmt_value(unit: &str, v: u64) -> String {
    if unit == "bytes" {
        report::human_bytes(v)
    } else {
        format!("{v} {unit}")
    }
}

/// Error messages should name the path the user knows, not /proc/PID/exe.
fn relabel(
    e: crate::error::TargetError,
    via: &std::path::Path,
    exe: &std::path::Path,
) -> crate::error::TargetError {
    use crate::error::TargetError as E;
    let fix = |p: PathBuf| if p == via { exe.to_owned() } else { p };
    match e {
        E::NotGo(p) => E::NotGo(fix(p)),
        E::Stripped(p) => E::Stripped(fix(p)),
        E::MissingSymbol { path, symbol } => E::MissingSymbol {
            path: fix(path),
            symbol,
        },
        E::Prologue { path, symbol } => E::Prologue {
            path: fix(path),
            symbol,
        },
        E::Read { path, reason } => E::Read {
            path: fix(path),
            reason,
        },
        other => other,
    }
}

/// Reads the ring buffer until the window ends; returns what ended it.
async fn stream(
    tracer: &mut Tracer,
    ring: RingBuf<MapData>,
    agg: &mut Aggregator,
    targets: &mut [Target],
    duration: Option<Duration>,
    decode_errors: &mut u64,
) -> anyhow::Result<String> {
    // SAFETY: the ring buffer's fd stays open for as long as AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {}", e.into_parts().1))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    let mut last_progress = start;
    let mut drain = |ring: &mut RingBuf<MapData>, agg: &mut Aggregator, targets: &mut [Target]| {
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(d) => {
                    // A launched target's maps are only meaningful after exec,
                    // i.e. once it produces events.
                    if let Some(t) = targets
                        .iter_mut()
                        .find(|t| t.pid == d.ev.tgid && t.image.maps.is_none())
                    {
                        t.image.maps = procfs::read_maps(t.pid);
                    }
                    agg.apply(&d);
                }
                Err(e) => {
                    *decode_errors += 1;
                    log::warn!("{e}");
                }
            }
        }
    };
    let ended = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), agg, targets);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                drain(ring.get_mut(), agg, targets);
                tracer.flush_logs();
                for t in targets.iter_mut().filter(|t| t.exited.is_none()) {
                    if t.launched {
                        t.exited = launch::try_wait(t.pid);
                    } else if !procfs::is_alive(t.pid) {
                        t.exited = Some(0);
                    }
                    // Keep mappings current (new shared objects, PIE), but only
                    // once they were first read after exec.
                    if t.exited.is_none() && t.image.maps.is_some() {
                        if let Some(m) = procfs::read_maps(t.pid) {
                            t.image.maps = Some(m);
                        }
                    }
                }
                if targets.iter().all(|t| t.exited.is_some()) {
                    break "every target exited".to_string();
                }
                if duration.is_some_and(|d| start.elapsed() >= d) {
                    break "duration".to_string();
                }
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = tokio::time::Instant::now();
                    eprintln!(
                        "memtrace: {:.0} s, {} events, {} dropped",
                        start.elapsed().as_secs_f64(),
                        agg.events,
                        tracer.counters()[Counter::RingbufDrops as usize]
                    );
                }
            }
            _ = sigint.recv() => break "SIGINT".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
        }
    };
    // Stop new events, then take what is already in the buffer.
    tracer.clear_targets();
    drain(ring.get_mut(), agg, targets);
    Ok(ended)
}
