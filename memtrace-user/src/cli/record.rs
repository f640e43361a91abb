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

use super::goroutines;
use super::runtime_profile::RuntimeProfile;
use crate::aggregate::{Aggregator, AllocAgg, GoroutineAgg, MmapAgg, RssAgg, Thp};
use crate::breakdown::{self, Breakdown};
use crate::decode::Resolver;
use crate::goruntime::GoBinary;
use crate::launch;
use crate::lens::Lens;
use crate::loader::Tracer;
use crate::memprof;
use crate::preflight;
use crate::procfs;
use crate::render::summary::{self, Counters, SizePercentiles, Summary};
use crate::render::{self, timeline::Point};
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
    /// the target is used as it is.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub memprofile_rate: u64,
    /// Command to launch and trace from its first instruction.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

struct Target {
    pid: u32,
    exe: PathBuf,
    bin: GoBinary,
    image: Image,
    launched: bool,
    exited: Option<i32>,
    vmrss_start: Option<u64>,
    timeline: Vec<Point>,
    /// Live goroutines, sampled every second (goroutines lens).
    live_goroutines: Vec<(f64, usize)>,
    /// The runtime's memory profile (alloc and heap lenses).
    profile: Option<RuntimeProfile>,
}

impl Target {
    fn new(pid: u32, exe: PathBuf, bin: GoBinary, launched: bool) -> Self {
        let maps = if launched {
            None
        } else {
            procfs::read_maps(pid)
        };
        Self {
            pid,
            image: Image {
                exe: exe.clone(),
                maps,
                root: Some(procfs::proc_dir(pid).join("root")),
            },
            exe,
            bin,
            launched,
            exited: None,
            // A launched program's window starts at exec, with nothing resident.
            vmrss_start: if launched {
                Some(0)
            } else {
                procfs::read_status(pid).map(|s| s.vm_rss)
            },
            timeline: Vec::new(),
            live_goroutines: Vec::new(),
            profile: None,
        }
    }

    /// The executable's mappings, once the process runs it.
    fn exe_maps(&self) -> Vec<crate::procfs::MapEntry> {
        self.image
            .maps
            .iter()
            .flatten()
            .filter(|m| m.path.as_deref() == Some(self.exe.as_path()))
            .cloned()
            .collect()
    }

    /// Starts the runtime memory profile once the process runs the binary.
    fn start_profile(&mut self) -> anyhow::Result<()> {
        if self.profile.as_ref().is_none_or(|p| p.started()) {
            return Ok(());
        }
        if procfs::exe_path(self.pid).ok().as_deref() != Some(self.exe.as_path()) {
            return Ok(()); // not exec'd yet
        }
        if self.image.maps.is_none() {
            self.image.maps = procfs::read_maps(self.pid);
        }
        let exe_maps = self.exe_maps();
        let (pid, bin) = (self.pid, &self.bin);
        let p = self.profile.as_mut().expect("checked above");
        p.start(bin, &exe_maps).with_context(|| {
            format!("reading the Go memory profile of pid {pid} (alloc/heap lenses)")
        })
    }

    fn sample(&mut self, t: f64) {
        if let Some(s) = procfs::read_status(self.pid).filter(|s| s.vm_rss > 0) {
            self.timeline.push(Point {
                t,
                vm_rss: s.vm_rss,
                rss_anon: s.rss_anon,
                rss_file: s.rss_file,
                rss_shmem: s.rss_shmem,
            });
        }
    }

    /// Anonymous private writable mappings, for THP `always` accounting.
    fn anon_vmas(&self) -> Vec<(u64, u64)> {
        self.image
            .maps
            .iter()
            .flatten()
            .filter(|m| m.path.is_none() && m.perms.starts_with("rw") && m.perms.ends_with('p'))
            .map(|m| (m.start, m.end))
            .collect()
    }

    fn breakdown(&self) -> Option<Breakdown> {
        if self.exited.is_some() {
            return None;
        }
        let smaps = std::fs::read_to_string(procfs::proc_dir(self.pid).join("smaps")).ok()?;
        let exe_maps = self.exe_maps();
        let stacks = self
            .bin
            .allgs
            .and_then(|a| self.bin.runtime_addr(a, &exe_maps))
            .and_then(|a| breakdown::goroutine_stack_bytes(self.pid, a).ok())
            .unwrap_or(0);
        Some(breakdown::from_smaps(&smaps, stacks))
    }
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
    let want_rss = lenses.contains(&Lens::Rss);
    let want_profile = lenses.contains(&Lens::Alloc) || lenses.contains(&Lens::Heap);
    let want_goroutines = lenses.contains(&Lens::Goroutines);

    let mut tracepoints: Vec<(&'static str, &str, &str)> = lenses
        .iter()
        .flat_map(|l| l.tracepoints().iter().copied())
        .collect();
    tracepoints.sort();
    tracepoints.dedup();
    let tp_paths: Vec<String> = tracepoints
        .iter()
        .map(|(_, c, n)| format!("{c}/{n}"))
        .collect();
    preflight::check(&tp_paths.iter().map(String::as_str).collect::<Vec<_>>())?;

    // Resolve and vet every target before touching the kernel.
    let mut targets: Vec<Target> = Vec::new();
    let mut attach_paths = Vec::new();
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
            targets.push(Target::new(pid, exe, bin, false));
            attach_paths.push(via);
        }
    } else {
        let path = launch::resolve(&args.command[0])?;
        let bin = GoBinary::open(&path)?;
        let g = launch::spawn_gated(&path, &args.command)?;
        targets.push(Target::new(g.pid, path.clone(), bin, true));
        attach_paths.push(path);
        gate = Some(g);
    }

    // Features that read runtime variables need the symbol table; say so
    // before anything is attached (or the launched program left waiting).
    for t in &targets {
        let needs: &[(bool, Option<u64>, &str, &str)] = &[
            (
                want_goroutines && !t.launched,
                t.bin.allgs,
                "runtime.allgs",
                "goroutines lens (attach mode)",
            ),
            (
                want_profile,
                t.bin.mbuckets,
                "runtime.mbuckets",
                "alloc and heap lenses",
            ),
        ];
        if let Some((_, _, symbol, needed_by)) = needs.iter().find(|n| n.0 && n.1.is_none()) {
            if let Some(g) = gate.take() {
                // SAFETY: signalling our own gated child.
                unsafe { libc::kill(g.pid as i32, libc::SIGKILL) };
                launch::try_wait(g.pid);
            }
            return Err(t.bin.missing(symbol, needed_by).into());
        }
    }

    let setup = || -> anyhow::Result<(Tracer, RingBuf<MapData>)> {
        let mut tracer = Tracer::load()?;
        tracer.attach_tracepoints(&tracepoints)?;
        for (t, attach_path) in targets.iter().zip(&attach_paths) {
            let mut config = memtrace_common::TargetConfig::default();
            match &t.bin.gc {
                Ok(points) => {
                    let exe_maps = t.exe_maps();
                    let addr = |a: Option<u64>| {
                        a.and_then(|a| t.bin.runtime_addr(a, &exe_maps))
                            .unwrap_or(0)
                    };
                    config.heap_live = addr(points.heap_live);
                    config.heap_goal = addr(points.heap_goal);
                    tracer.attach_gc(points, attach_path, t.pid)?;
                }
                Err(e) => eprintln!("memtrace: warning: pid {}: no GC view: {e}", t.pid),
            }
            tracer.add_target(t.pid, config)?;
            if want_alloc {
                tracer.attach_alloc(&t.bin, attach_path, t.pid)?;
            }
            if want_goroutines {
                let points = t
                    .bin
                    .goroutines
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tracer.attach_goroutines(points, attach_path, t.pid)?;
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
            "memtrace: tracing pid {} ({}, {}{}{}) with lens {}{}",
            t.pid,
            t.exe.display(),
            t.bin
                .module
                .as_deref()
                .map_or(String::new(), |m| format!("{m}, ")),
            t.bin.go_version,
            match (t.bin.stripped, t.bin.pie) {
                (true, true) => ", stripped, PIE",
                (true, false) => ", stripped",
                (false, true) => ", PIE",
                (false, false) => "",
            },
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
        rss: want_rss.then(|| {
            RssAgg::new(Thp::parse(
                &std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                    .unwrap_or_default(),
            ))
        }),
        goroutines: want_goroutines.then(GoroutineAgg::default),
        gc: Default::default(),
        events: 0,
    };
    let mut resolver = Resolver::default();
    if let Some(gs) = agg.goroutines.as_mut() {
        // Probes are in place, so a goroutine made from now on is seen
        // created; list the ones already there.
        for t in targets.iter().filter(|t| !t.launched) {
            let n = goroutines::add_existing(t.pid, &t.bin, &t.exe_maps(), &mut resolver, gs)
                .with_context(|| format!("listing the goroutines of pid {}", t.pid))?;
            if t.bin.g_layout.is_none() {
                eprintln!("memtrace: warning: pid {}: no DWARF for runtime.g; {n} existing goroutines are counted without their state", t.pid);
            }
        }
    }
    if want_profile {
        for t in targets.iter_mut() {
            t.profile = Some(RuntimeProfile::new(t.pid, &t.bin, args.memprofile_rate)?);
            // Attached targets start now; launched ones once they exec.
            if !t.launched {
                t.start_profile()?;
            }
        }
    }
    let started = Instant::now();
    let window_start_ns = monotonic_ns();
    if let Some(g) = gate {
        g.release();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let ended_by = rt.block_on(stream(
        &mut tracer,
        ring,
        &mut agg,
        &mut targets,
        args.duration.map(Duration::from_secs_f64),
        &mut resolver,
    ))?;
    let duration_secs = started.elapsed().as_secs_f64();
    let counters = tracer.counters();
    let mut vmrss_end = HashMap::new();
    let mut breakdowns = HashMap::new();
    let mut profile_cells: HashMap<
        Lens,
        HashMap<crate::aggregate::StackKey, crate::aggregate::Cell>,
    > = HashMap::new();
    let mut profile_rates = Vec::new();
    for t in targets.iter_mut() {
        if t.exited.is_none() {
            t.sample(duration_secs);
        }
        if let Some(p) = t.profile.as_mut() {
            p.finish();
            profile_rates.push(p.rate);
            if let (Some(start), Some(end)) = (&p.start, &p.last) {
                let by_lens = [
                    (Lens::Alloc, memprof::alloc_delta(start, end, p.rate)),
                    (Lens::Heap, memprof::inuse(end, p.rate)),
                ];
                for (lens, rows) in by_lens {
                    let cells = profile_cells.entry(lens).or_default();
                    for (stack, bytes, objects) in rows {
                        // Bucket stacks hold return addresses: make the
                        // first one point into the call, like a pc.
                        let mut frames = stack.to_vec();
                        if let Some(f) = frames.first_mut() {
                            *f = f.saturating_sub(1);
                        }
                        let id = resolver.intern(t.pid, frames);
                        let c = cells.entry((t.pid, id)).or_default();
                        c.bytes += bytes;
                        c.objects += objects;
                    }
                }
            } else {
                eprintln!(
                    "memtrace: warning: pid {}: no memory-profile snapshot at the end of the window; the alloc and heap lenses are empty for it",
                    t.pid
                );
            }
        }
        vmrss_end.insert(t.pid, t.timeline.last().map(|p| p.vm_rss));
        breakdowns.insert(t.pid, t.breakdown());
    }

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
    let stack_of = |id: u32| resolver.frames(id as i32).map(<[u64]>::to_vec);
    let mut sym = Symbolizer::default();
    for t in targets.iter() {
        // Frames in the executable resolve through its pclntab, under the
        // name its mappings carry (which may not exist in this namespace).
        sym.add_go_binary(&t.exe, t.bin.table.clone());
        if let Ok(real) = std::fs::canonicalize(&t.exe) {
            sym.add_go_binary(&real, t.bin.table.clone());
        }
    }
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
            Lens::Rss => {
                let r = agg.rss.as_ref().expect("rss lens enabled");
                let start: u64 = targets.iter().filter_map(|t| t.vmrss_start).sum();
                let end: u64 = vmrss_end.values().flatten().sum();
                let untracked: u64 = r.untracked.values().map(|c| c.bytes).sum();
                let j = |k: &str, v: serde_json::Value| (k.to_string(), v);
                (
                    r.by_stack(),
                    BTreeMap::from([
                        j("released_bytes", serde_json::json!(r.released_bytes)),
                        j(
                            "release_requested_bytes",
                            serde_json::json!(r.release_requested_bytes),
                        ),
                        j("lazy_free_bytes", serde_json::json!(r.lazy_free_bytes)),
                        j("repeat_faults", serde_json::json!(r.repeat_faults)),
                        j("untracked_bytes", serde_json::json!(untracked)),
                        j(
                            "thp",
                            serde_json::json!(format!("{:?}", r.thp).to_lowercase()),
                        ),
                        j("vmrss_start", serde_json::json!(start)),
                        j("vmrss_end", serde_json::json!(end)),
                        j("vmrss_growth", serde_json::json!(end as i64 - start as i64)),
                    ]),
                )
            }
            Lens::Alloc | Lens::Heap => (
                profile_cells.remove(lens).unwrap_or_default(),
                BTreeMap::from([(
                    "sample_rate_bytes".to_string(),
                    serde_json::json!(profile_rates.first().copied().unwrap_or(0)),
                )]),
            ),
            Lens::Goroutines => {
                let gs = agg.goroutines.as_ref().expect("goroutines lens enabled");
                let j = |k: &str, v: serde_json::Value| (k.to_string(), v);
                let mut stack_bytes: HashMap<crate::aggregate::StackKey, u64> = HashMap::new();
                for t in targets.iter().filter(|t| t.exited.is_none()) {
                    for (g, key) in gs.live_of(t.pid) {
                        *stack_bytes.entry(key).or_default() +=
                            goroutines::stack_bytes(t.pid, g).unwrap_or(0);
                    }
                }
                let site_profile =
                    |cells: HashMap<crate::aggregate::StackKey, crate::aggregate::Cell>,
                     sym: &mut Symbolizer| {
                        report::build_profile(
                            *lens,
                            &cells,
                            &images,
                            &stack_of,
                            sym,
                            duration_secs,
                            String::new(),
                        )
                    };
                let as_cells = |m: &HashMap<crate::aggregate::StackKey, u64>| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                *k,
                                crate::aggregate::Cell {
                                    bytes: *v,
                                    objects: 0,
                                },
                            )
                        })
                        .collect::<HashMap<_, _>>()
                };
                let created = site_profile(as_cells(&gs.created), &mut sym);
                let exited = site_profile(as_cells(&gs.exited), &mut sym);
                let bytes = site_profile(as_cells(&stack_bytes), &mut sym);
                let mut sites: BTreeMap<Vec<String>, [u64; 3]> = BTreeMap::new();
                for (i, p) in [&created, &exited, &bytes].into_iter().enumerate() {
                    for s in &p.samples {
                        sites.entry(s.frames.clone()).or_default()[i] += s.value;
                    }
                }
                let sites: Vec<serde_json::Value> = sites
                    .into_iter()
                    .map(|(stack, [c, e, b])| serde_json::json!({"stack": stack, "created": c, "exited": e, "stack_bytes": b}))
                    .collect();
                let timeline: Vec<serde_json::Value> = targets
                    .iter()
                    .map(|t| serde_json::json!({"pid": t.pid, "live": t.live_goroutines.iter().map(|(s, n)| serde_json::json!({"t": s, "live": n})).collect::<Vec<_>>()}))
                    .collect();
                (
                    gs.by_stack(),
                    BTreeMap::from([
                        j(
                            "created",
                            serde_json::json!(gs.created.values().sum::<u64>()),
                        ),
                        j("exited", serde_json::json!(gs.exited.values().sum::<u64>())),
                        j("unknown_exits", serde_json::json!(gs.unknown_exits)),
                        j("sites", serde_json::json!(sites)),
                        j("live_over_time", serde_json::json!(timeline)),
                    ]),
                )
            }
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
                go_version: t.bin.go_version.clone(),
                module: t.bin.module.clone(),
                build_id: t.bin.table.build_id.clone(),
                stripped: t.bin.stripped,
                pie: t.bin.pie,
                vmrss_start: t.vmrss_start,
                vmrss_end: vmrss_end[&t.pid],
                timeline: t.timeline.clone(),
                breakdown: breakdowns[&t.pid],
            })
            .collect(),
        lenses: lens_summaries,
        dropped_events: dropped,
        duration_secs,
        counters: Counters {
            ringbuf_drops: dropped,
            stack_errors: counters[Counter::StackErrors as usize],
            stack_reuses: counters[Counter::StackReuses as usize],
            lost_stacks: resolver.lost_stacks,
            distinct_stacks: resolver.stack_count() as u64,
            syscall_unpaired: resolver.unpaired,
            alloc_probe_hits: counters[Counter::AllocHits as usize],
            unresolved_frames: sym.unresolved,
            decode_errors: resolver.decode_errors,
            events: agg.events,
        },
        ended_by: ended_by.clone(),
        gc: summary::gc_view(&agg.gc, window_start_ns),
    };
    let summary_path = report::write_summary(&args.out, &summary)?;
    let mut timelines = Vec::new();
    if want_rss {
        for t in &targets {
            let name = if targets.len() == 1 {
                "timeline.svg".to_string()
            } else {
                format!("timeline-{}.svg", t.pid)
            };
            let path = args.out.join(name);
            let title = format!("RSS of {} (pid {})", images[&t.pid].0, t.pid);
            std::fs::write(&path, render::timeline::render(&title, &t.timeline))
                .with_context(|| format!("writing {}", path.display()))?;
            timelines.push(path);
        }
    }
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
    for t in &targets {
        if let (Some(s), Some(e)) = (t.vmrss_start, vmrss_end[&t.pid]) {
            println!(
                "pid {}: VmRSS {} -> {} ({}{})",
                t.pid,
                report::human_bytes(s),
                report::human_bytes(e),
                if e >= s { "+" } else { "-" },
                report::human_bytes(e.abs_diff(s))
            );
        }
        if let Some(b) = breakdowns[&t.pid] {
            println!(
                "pid {}: resident now: Go heap {}, goroutine stacks {}, off-heap anonymous {}, file-backed {}, other {}",
                t.pid,
                report::human_bytes(b.go_heap),
                report::human_bytes(b.goroutine_stacks),
                report::human_bytes(b.off_heap_anon),
                report::human_bytes(b.file_backed),
                report::human_bytes(b.other)
            );
        }
    }
    let gc = &agg.gc;
    if !gc.cycles.is_empty() || !gc.pauses.is_empty() {
        let us = |ns: u64| format!("{:.0} µs", ns as f64 / 1e3);
        let last = gc
            .cycles
            .last()
            .filter(|c| c.heap_goal > 0)
            .map(|c| {
                format!(
                    "; last cycle: heap {}, goal {}",
                    report::human_bytes(c.heap_live),
                    report::human_bytes(c.heap_goal)
                )
            })
            .unwrap_or_default();
        println!(
            "GC: {} cycles; stop-the-world pauses p50 {}, p99 {}, max {} ({} pauses){last}",
            gc.cycles.len(),
            us(gc.pauses.value_at_quantile(0.5)),
            us(gc.pauses.value_at_quantile(0.99)),
            us(gc.pauses.max()),
            gc.pauses.len()
        );
    }
    for p in &timelines {
        println!("wrote {}", p.display());
    }
    println!("wrote {}", summary_path.display());
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        E::Stripped {
            path,
            symbol,
            needed_by,
        } => E::Stripped {
            path: fix(path),
            symbol,
            needed_by,
        },
        E::GoVersion { path, version } => E::GoVersion {
            path: fix(path),
            version,
        },
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
    resolver: &mut Resolver,
) -> anyhow::Result<String> {
    // SAFETY: the ring buffer's fd stays open for as long as AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {}", e.into_parts().1))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    let mut last_progress = start;
    let mut last_sample = start;
    for t in targets.iter_mut().filter(|t| !t.launched) {
        t.sample(0.0);
    }
    let mut drain = |ring: &mut RingBuf<MapData>, agg: &mut Aggregator, targets: &mut [Target]| {
        while let Some(item) = ring.next() {
            match resolver.feed(&item) {
                Ok(None) => {}
                Ok(Some(r)) => {
                    // A launched target's maps are only meaningful after exec,
                    // i.e. once it produces events.
                    if let Some(t) = targets
                        .iter_mut()
                        .find(|t| t.pid == r.key.0 && t.image.maps.is_none())
                    {
                        t.image.maps = procfs::read_maps(t.pid);
                    }
                    agg.apply(&r);
                }
                Err(e) => {
                    resolver.decode_errors += 1;
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
                if last_sample.elapsed() >= Duration::from_secs(1) {
                    last_sample = tokio::time::Instant::now();
                    let t_now = start.elapsed().as_secs_f64();
                    for t in targets.iter_mut().filter(|t| t.exited.is_none()) {
                        t.sample(t_now);
                        if let Err(e) = t.start_profile() {
                            log::warn!("{e:#}");
                        }
                        if let Some(p) = t.profile.as_mut() {
                            p.tick();
                        }
                        if let Some(gs) = agg.goroutines.as_ref() {
                            t.live_goroutines.push((t_now, gs.live_count(t.pid)));
                        }
                        if let Some(r) = agg.rss.as_mut().filter(|r| r.thp == Thp::Always) {
                            r.set_anon_vmas(t.pid, t.anon_vmas());
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
