//! `memtrace top`: a live view of Go processes' memory while it happens,
//! drawn with ratatui (or one plain block per interval when stdout is not a
//! terminal). `q` quits (and detaches every probe), `s` saves a report of
//! the window so far, Tab switches lens, the arrows select a process.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};

use crate::binary::goruntime::GoBinary;
use crate::engine::host::Procfs;
use crate::engine::run::{self, Policy, Step};
use crate::engine::{setup, Engine, Options, TargetSpec};
use crate::front::top::{self, screen, Row, View};
use crate::kernel::ebpf::Ebpf;
use crate::kernel::Kernel as _;
use crate::model::lens::Lens;
use crate::model::profile::FrameMode;

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
}

/// Stacks listed per process.
const TOP_N: usize = 10;

/// The terminal while the view is up: raw mode and the alternate screen,
/// undone on drop (quit, error or panic).
struct Tui {
    terminal: ratatui::DefaultTerminal,
}

impl Tui {
    fn start() -> std::io::Result<Self> {
        enable_raw_mode()?;
        if let Err(e) = execute!(std::io::stdout(), EnterAlternateScreen) {
            let _ = disable_raw_mode();
            return Err(e);
        }
        let backend = ratatui::backend::CrosstermBackend::new(std::io::stdout());
        let mut terminal = ratatui::Terminal::new(backend)?;
        terminal.hide_cursor()?;
        terminal.clear()?;
        Ok(Self { terminal })
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(std::io::stdout(), LeaveAlternateScreen);
        let _ = self.terminal.show_cursor();
    }
}

struct TopPolicy {
    rows: BTreeMap<u32, Row>,
    lenses: Vec<Lens>,
    lens: usize,
    selected: usize,
    /// `l`: name top stacks by their leaf frame, not the program's own.
    leaf_frames: bool,
    started: Instant,
    last_refresh: Option<Instant>,
    interval: Duration,
    out: PathBuf,
    tui: Option<Tui>,
    status: String,
}

impl TopPolicy {
    fn view(&self, engine: &Engine<Ebpf, Procfs>) -> View {
        View {
            lens: self.lenses[self.lens],
            lenses: self.lenses.clone(),
            elapsed: self.started.elapsed().as_secs_f64(),
            interval: self.interval.as_secs_f64(),
            rows: self.rows.values().cloned().collect(),
            events: engine.agg.events,
            drops: {
                let k = engine.kernel.counters();
                k.ringbuf_drops + k.kernel_misses
            },
            leaf_frames: self.leaf_frames,
        }
    }

    /// Samples VmRSS and takes each process's cumulative report.
    fn refresh(&mut self, engine: &mut Engine<Ebpf, Procfs>) {
        let secs = self.last_refresh.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.last_refresh = Some(Instant::now());
        let lens = self.lenses[self.lens];
        let traced_goroutines = self.lenses.contains(&Lens::Goroutines);
        let pids: Vec<u32> = engine.targets().map(|t| t.pid).collect();
        for pid in pids {
            let Some(t) = engine.target(pid) else {
                continue;
            };
            let alive = t.exit.is_none();
            let exited = match (&t.oom, t.exit) {
                (Some(_), _) => Some("killed by the OOM killer".to_string()),
                (None, e) => e.map(|e| e.describe()),
            };
            let name = t.name();
            let allgs = t.bin.allgs.and_then(|a| t.runtime_addr(a));
            let bin = t.bin.clone();
            let report = engine.report(Some(&[pid]), "top");
            let row = self.rows.entry(pid).or_insert_with(|| Row {
                pid,
                name,
                ..Row::default()
            });
            if alive {
                if let Some(s) = crate::host::procfs::read_status(pid) {
                    row.sample(s.vm_rss, secs);
                }
                if !traced_goroutines {
                    row.goroutines = allgs.and_then(|a| live_goroutines(&bin, pid, a));
                }
            }
            row.exited = exited;
            row.update_from(lens, &report.summary, TOP_N, self.leaf_frames);
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    /// `s`: the report so far, as `record` writes it.
    fn save(&mut self, engine: &mut Engine<Ebpf, Procfs>) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = self.out.join(format!("top-{secs}"));
        let report = engine.report(None, "top: saved");
        self.status = match std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::render::report::write_report(&dir, &report, FrameMode::Line)
                    .map_err(|e| e.to_string())
            }) {
            Ok(w) => format!("saved the report so far: {}", w.page.display()),
            Err(e) => format!("saving failed: {e}"),
        };
        if self.tui.is_none() {
            println!("memtrace top: {}", self.status);
        }
    }

    fn draw(&mut self, engine: &Engine<Ebpf, Procfs>) {
        let view = self.view(engine);
        let selected = self.selected;
        let status = self.status.clone();
        if let Some(tui) = self.tui.as_mut() {
            let r = tui
                .terminal
                .draw(|f| screen::draw(f, &view, selected, &status));
            if let Err(e) = r {
                self.status = format!("drawing failed: {e}");
            }
        } else {
            print!("{}", top::plain(&view, 5));
        }
    }

    /// Handles waiting keys; `Some` ends the session.
    fn keys(&mut self, engine: &mut Engine<Ebpf, Procfs>) -> Option<Step> {
        self.tui.as_ref()?;
        let mut redraw = false;
        while event::poll(Duration::ZERO).unwrap_or(false) {
            let Ok(Event::Key(k)) = event::read() else {
                redraw = true; // a resize
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Some(Step::Stop("q".into())),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Some(Step::Stop("Ctrl-C".into()))
                }
                KeyCode::Char('s') => self.save(engine),
                KeyCode::Char('l') => {
                    self.leaf_frames = !self.leaf_frames;
                    self.refresh(engine);
                }
                KeyCode::Tab => {
                    self.lens = (self.lens + 1) % self.lenses.len();
                    self.refresh(engine);
                }
                KeyCode::BackTab => {
                    self.lens = (self.lens + self.lenses.len() - 1) % self.lenses.len();
                    self.refresh(engine);
                }
                KeyCode::Down => {
                    self.selected = (self.selected + 1).min(self.rows.len().saturating_sub(1))
                }
                KeyCode::Up => self.selected = self.selected.saturating_sub(1),
                _ => continue,
            }
            redraw = true;
        }
        if redraw {
            self.draw(engine);
        }
        None
    }
}

/// Live goroutines from `runtime.allgs`, when the binary says how to read
/// their state.
fn live_goroutines(bin: &GoBinary, pid: u32, allgs: u64) -> Option<u64> {
    let mem = crate::host::remote::ProcessMemory::open(pid).ok()?;
    crate::lens::goroutines::count_live(bin, &mem, allgs)
        .ok()
        .flatten()
}

impl Policy<Ebpf, Procfs> for TopPolicy {
    fn on_tick(&mut self, engine: &mut Engine<Ebpf, Procfs>, _exited: &[u32]) -> Step {
        if let Some(stop) = self.keys(engine) {
            return stop;
        }
        let due = self
            .last_refresh
            .is_none_or(|t| t.elapsed() >= self.interval);
        if due {
            self.refresh(engine);
            self.draw(engine);
            if self.tui.is_none() && engine.live_pids().is_empty() {
                return Step::Stop("every target exited".into());
            }
        }
        Step::Continue
    }
}

/// Every running Go process but memtrace, each binary parsed once.
fn scan(opts: &Options) -> Vec<TargetSpec> {
    let me = std::process::id();
    let mut bins: HashMap<(u64, u64), Option<Arc<GoBinary>>> = HashMap::new();
    let mut specs = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return specs;
    };
    let mut pids: Vec<u32> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me)
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let via = crate::host::procfs::proc_dir(pid).join("exe");
        let Ok(meta) = std::fs::metadata(&via) else {
            continue;
        };
        let bin = bins
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| GoBinary::open(&via).ok().map(Arc::new))
            .clone();
        let Some(bin) = bin else { continue };
        match TargetSpec::running(pid, bin) {
            Ok(s) => match setup::vet(&s, opts) {
                Ok(()) => specs.push(s),
                Err(e) => eprintln!("memtrace: top: skipping pid {pid}: {e}"),
            },
            Err(_) => continue,
        }
    }
    specs
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
    let opts = Options::new(lenses.clone());
    setup::check_host(&opts)?;
    // Forked while memtrace has one thread: it undoes what memtrace writes
    // into targets if memtrace is killed.
    let guardian =
        crate::host::guard::Guardian::spawn().context("starting the guardian process")?;
    let specs = if args.pids.is_empty() {
        let s = scan(&opts);
        if s.is_empty() {
            bail!("no Go process to watch is running: start one, or give --pid PID");
        }
        s
    } else {
        args.pids
            .iter()
            .map(|&p| setup::running(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let (mut engine, _) = setup::start(&opts, &specs, None, guardian)?;
    engine.begin();
    let tty = std::io::stdout().is_terminal();
    let mut policy = TopPolicy {
        rows: BTreeMap::new(),
        lenses,
        lens: 0,
        selected: 0,
        leaf_frames: false,
        started: Instant::now(),
        last_refresh: None,
        interval: Duration::from_secs_f64(args.interval),
        out: args.out.clone(),
        tui: None,
        status: String::new(),
    };
    if tty {
        policy.tui = Some(Tui::start().context("cannot set up the terminal")?);
    } else {
        eprintln!(
            "memtrace: top: watching {} process(es); a block every {} s; Ctrl-C to stop",
            specs.len(),
            args.interval
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let ended = rt.block_on(run::drive(&mut engine, &mut policy));
    // Restore the terminal before saying anything.
    drop(policy.tui.take());
    engine.finish();
    engine.release_guardian();
    let ended = ended?;
    eprintln!(
        "memtrace: top: stopped ({ended}); every probe detached from {} process(es)",
        specs.len()
    );
    Ok(())
}
