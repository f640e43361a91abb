//! `memtrace top`'s policy over the engine: every interval it samples each
//! process's VmRSS and cumulative report into rows, draws them (ratatui on
//! a terminal, plain blocks otherwise) and handles keys: `q` quits, `s`
//! saves the window so far, `l` toggles leaf frames, Tab switches lens,
//! the arrows select a process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};

use super::{plain, screen, Row, View};
use crate::binary::goruntime::GoBinary;
use crate::engine::discover::{self, Binaries, Found, Process};
use crate::engine::host::Host;
use crate::engine::run::{Policy, Step};
use crate::engine::{setup, Engine, Options, TargetSpec};
use crate::host::remote::RemoteMemory;
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;
use crate::model::lens::Lens;
use crate::model::profile::FrameMode;
use crate::model::reporter::{Collect, Kind, Reporter as _, Stderr};

/// Stacks listed per process.
const TOP_N: usize = 10;

/// The terminal while the view is up: raw mode and the alternate screen,
/// undone on drop (quit, error or panic).
pub struct Tui {
    terminal: ratatui::DefaultTerminal,
}

impl Tui {
    pub fn start() -> std::io::Result<Self> {
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

pub struct TopPolicy {
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
    pub tui: Option<Tui>,
    status: String,
    /// The session's messages while the screen is up (they would tear it
    /// on stderr): the newest shows in the status line, and all are
    /// printed once the terminal is restored.
    pub said: Option<Arc<Collect>>,
    /// How many of them the status line has shown.
    shown: usize,
}

impl TopPolicy {
    pub fn new(lenses: Vec<Lens>, interval: Duration, out: PathBuf) -> Self {
        TopPolicy {
            rows: BTreeMap::new(),
            lenses,
            lens: 0,
            selected: 0,
            leaf_frames: false,
            started: Instant::now(),
            last_refresh: None,
            interval,
            out,
            tui: None,
            status: String::new(),
            said: None,
            shown: 0,
        }
    }

    fn view<K: Kernel, H: Host>(&self, engine: &Engine<K, H>) -> View {
        View {
            lens: self.lenses[self.lens],
            lenses: self.lenses.clone(),
            elapsed: self.started.elapsed().as_secs_f64(),
            interval: self.interval.as_secs_f64(),
            rows: self.rows.values().cloned().collect(),
            events: engine.events(),
            drops: {
                let k = engine.kernel_counters();
                k.ringbuf_drops + k.kernel_misses
            },
            leaf_frames: self.leaf_frames,
        }
    }

    /// Samples VmRSS and takes each process's cumulative report.
    fn refresh<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
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
            let report = engine.report(Some(&[pid]), EndedBy::Top);
            let row = self.rows.entry(pid).or_insert_with(|| Row {
                pid,
                name,
                ..Row::default()
            });
            if alive {
                if let Some(s) = engine.status(pid) {
                    row.sample(s.vm_rss, secs);
                }
                if !traced_goroutines {
                    row.goroutines = allgs.and_then(|a| {
                        let mem = engine.memory(pid).ok()?;
                        live_goroutines(&bin, &*mem, a)
                    });
                }
            }
            row.exited = exited;
            row.update_from(lens, &report.summary, TOP_N, self.leaf_frames);
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    /// `s`: the report so far, as `record` writes it.
    fn save<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = self.out.join(format!("top-{secs}"));
        let report = engine.report(None, EndedBy::TopSaved);
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

    fn draw<K: Kernel, H: Host>(&mut self, engine: &Engine<K, H>) {
        if let Some(said) = self.said.as_ref() {
            let messages = said.messages();
            if let Some((kind, text)) = messages.get(self.shown..).and_then(<[_]>::last) {
                self.status = format!("{}{text}", kind_prefix(*kind));
                self.shown = messages.len();
            }
        }
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
            print!("{}", plain(&view, 5));
        }
    }

    /// Handles waiting keys; `Some` ends the session.
    fn keys<K: Kernel, H: Host>(&mut self, engine: &mut Engine<K, H>) -> Option<Step> {
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
                KeyCode::Char('q') | KeyCode::Esc => return Some(Step::Stop(EndedBy::Quit)),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Some(Step::Stop(EndedBy::CtrlC))
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
fn live_goroutines(bin: &GoBinary, mem: &dyn RemoteMemory, allgs: u64) -> Option<u64> {
    crate::lens::goroutines::count_live(bin, mem, allgs)
        .ok()
        .flatten()
}

impl<K: Kernel, H: Host> Policy<K, H> for TopPolicy {
    fn on_tick(&mut self, engine: &mut Engine<K, H>, _exited: &[u32]) -> Step {
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
                return Step::Stop(EndedBy::EveryTargetExited);
            }
        }
        Step::Continue
    }
}

/// Every running Go process but memtrace, vetted for `opts`; each binary
/// parsed once.
pub fn scan(opts: &Options) -> Vec<TargetSpec> {
    let mut bins = Binaries::default();
    let mut specs = Vec::new();
    for pid in discover::pids() {
        let Ok(p) = Process::open(pid) else {
            continue; // a kernel thread, gone, or not ours to read
        };
        let bin = match bins.of(&p) {
            Ok(Found::Go(b)) => b,
            Ok(Found::NotGo | Found::Pending) => continue,
            Err(e) => {
                eprintln!(
                    "memtrace: top: skipping {} (pid {pid}): {e}",
                    p.exe.display()
                );
                continue;
            }
        };
        let s = p.spec(bin);
        match setup::vet(&s, opts) {
            Ok(()) => specs.push(s),
            Err(e) => eprintln!("memtrace: top: skipping pid {pid}: {e}"),
        }
    }
    specs
}

/// How a message of `kind` starts in the status line.
fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Warning => "warning: ",
        Kind::Progress => "",
        Kind::Ebpf => "ebpf: ",
    }
}

/// Prints what `said` collected while the screen was up, now that the
/// terminal is restored.
pub fn print_said(said: &Collect) {
    for (kind, text) in said.messages() {
        Stderr.report(kind, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{add, engine};
    use crate::kernel::decode::encode;
    use memtrace_common::{Event, StackField};

    /// `top` over the fake kernel: a refresh shows each process's VmRSS
    /// and its growth by stack, a warning reaches the status line, and
    /// without a screen it stops once every process has exited.
    #[test]
    fn top_refreshes_from_the_engine_and_stops_when_everything_exited() {
        let mut e = engine(&[Lens::Rss], true);
        add(&mut e, 10, (1, 7), "/srv/app");
        e.fake_host().rss.borrow_mut().insert(10, 5 << 20);
        let mut ev = Event::fault(10, 10, 0x10000, 4096);
        ev.stack = StackField::Frames(1).encode();
        e.fake_kernel().records.push_back(encode(&ev, &[0x401000]));
        e.drain();
        let said = Arc::new(Collect::default());
        let mut top = TopPolicy::new(
            vec![Lens::Rss],
            Duration::ZERO,
            PathBuf::from("/nonexistent"),
        );
        top.said = Some(said.clone());
        said.warn("pid 10: something to know");
        assert!(matches!(top.on_tick(&mut e, &[]), Step::Continue));
        let row = &top.rows[&10];
        assert_eq!((row.rss(), row.total), (5 << 20, 4096));
        assert_eq!(top.status, "warning: pid 10: something to know");
        e.fake_host().alive.borrow_mut().remove(&10);
        assert_eq!(e.tick(), vec![10]);
        assert!(matches!(
            top.on_tick(&mut e, &[10]),
            Step::Stop(EndedBy::EveryTargetExited)
        ));
        assert!(top.rows[&10].exited.is_some(), "the row says it ended");
    }
}
