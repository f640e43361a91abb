//! One run of a gate: a command launched under the engine (held before its
//! first instruction, as `record` does), measured while it serves its own
//! load or a `--load` command's, then stopped; its record-style report
//! goes into the run's directory.

use std::io::{BufRead as _, Write as _};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::series::{counter_value, Metric, Requests, Samples};
use crate::engine::run::{Policy, Step};
use crate::engine::session::{Session, Targets};
use crate::engine::setup::SetupError;
use crate::engine::{Engine, Host, Options};
use crate::host::clock::monotonic_ns;
use crate::kernel::Kernel;
use crate::model::ended::EndedBy;
use crate::model::lens::Lens;
use crate::model::profile::{FrameMode, Profile};
use crate::model::target::Exit;

/// How long a service has to start listening before `--load` is refused.
const READY_WAIT: Duration = Duration::from_secs(15);

/// One run to make.
pub struct RunSpec<'a> {
    /// e.g. `A1` (baseline) or `B3` (candidate).
    pub label: String,
    pub argv: &'a [String],
    pub load: Option<&'a str>,
    pub duration: Option<f64>,
    pub metric: Metric,
    pub requests: Option<&'a Requests>,
    pub memprofile_rate: u64,
    /// The run's report directory.
    pub dir: PathBuf,
}

/// What a run measured.
pub struct RunOutcome {
    pub samples: Samples,
    /// The metric's lens profile over the whole run.
    pub profile: Option<Profile>,
    /// Requests over the whole run, when counted.
    pub requests: Option<f64>,
    pub secs: f64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("run {label}: {what}: {source}")]
    Io {
        label: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("run {label}: the program crashed: it {how}")]
    Crashed { label: String, how: String },
    #[error("run {label}: the service never listened on a TCP port within {}s, so --load had nothing to load", READY_WAIT.as_secs())]
    NeverListened { label: String },
    #[error("run {label}: the load command failed ({status}); see {log}")]
    Load {
        label: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("run {label}: the heap metric needs the GC view's heap size (runtime.gcController in the symbol table and DWARF): use --metric rss")]
    NoHeap { label: String },
}

/// The measuring policy of one run.
struct Measure<'a> {
    label: String,
    pid: u32,
    started: Instant,
    started_ns: u64,
    duration: Option<Duration>,
    metric: Metric,
    requests: Option<&'a Requests>,
    output: Option<std::io::BufReader<std::fs::File>>,
    log: std::fs::File,
    load: Option<&'a str>,
    load_child: Option<Child>,
    load_log: PathBuf,
    last_second: Instant,
    gc_seen: usize,
    last_gc: Option<f64>,
    samples: Samples,
    error: Option<RunError>,
    /// How the program ended, if on its own.
    ended: Option<Exit>,
}

impl Measure<'_> {
    fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Takes the program's new output lines: logged, and counted.
    fn read_output(&mut self) {
        let Some(out) = self.output.as_mut() else {
            return;
        };
        let mut line = String::new();
        let t = self.started.elapsed().as_secs_f64();
        while matches!(out.read_line(&mut line), Ok(n) if n > 0) {
            let _ = self.log.write_all(line.as_bytes());
            if let Some(Requests::Pattern(re)) = self.requests {
                if let Some(n) = Requests::from_line(re, line.trim_end()) {
                    self.samples.requests.push((t, n));
                }
            }
            line.clear();
        }
    }

    fn poll_counter(&mut self) {
        let Some(Requests::Counter { url, counter }) = self.requests else {
            return;
        };
        let body = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(800))
            .build()
            .get(url)
            .call()
            .ok()
            .and_then(|r| r.into_string().ok());
        if let Some(n) = body.and_then(|b| counter_value(&b, counter)) {
            let t = self.t();
            self.samples.requests.push((t, n));
        }
    }

    fn sample_memory<K: Kernel, H: Host>(&mut self, engine: &Engine<K, H>, second: bool) {
        let t = self.t();
        match self.metric {
            Metric::Rss => {
                if let Some(s) = engine.status(self.pid) {
                    self.samples.memory.push((t, s.vm_rss as f64));
                }
            }
            Metric::Heap => {
                let cycles = engine.gc_cycles();
                // The live heap after each cycle, which the next cycle
                // reads as "marked last time": placed at the cycle that
                // marked it.
                for c in cycles
                    .iter()
                    .skip(self.gc_seen)
                    .filter(|c| c.pid == self.pid)
                {
                    let at = c.ts_ns.saturating_sub(self.started_ns) as f64 / 1e9;
                    if let (Some(prev), true) = (self.last_gc, c.heap_marked > 0) {
                        self.samples.memory.push((prev, c.heap_marked as f64));
                    }
                    self.last_gc = Some(at);
                }
                self.gc_seen = cycles.len();
            }
            Metric::Alloc if second => {
                let got = engine
                    .target(self.pid)
                    .and_then(|t| t.profile.as_ref()?.allocated());
                if let Some(b) = got {
                    self.samples.memory.push((t, b as f64));
                }
            }
            Metric::Alloc => {}
        }
    }

    /// Starts the load once the service listens; says when the load ended.
    fn drive_load(&mut self) -> Option<EndedBy> {
        let cmd = self.load?;
        match self.load_child.as_mut() {
            None => {
                if crate::host::procfs::listening_ports(self.pid).is_empty() {
                    if self.started.elapsed() > READY_WAIT {
                        self.error = Some(RunError::NeverListened {
                            label: self.label.clone(),
                        });
                        return Some(EndedBy::NeverListened);
                    }
                    return None;
                }
                let log = std::fs::File::create(&self.load_log).ok()?;
                let err = log.try_clone().ok()?;
                match Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdout(log)
                    .stderr(err)
                    .spawn()
                {
                    Ok(c) => self.load_child = Some(c),
                    Err(e) => {
                        self.error = Some(RunError::Io {
                            label: self.label.clone(),
                            what: "starting the load command",
                            source: e,
                        });
                        return Some(EndedBy::LoadDidNotStart);
                    }
                }
                None
            }
            Some(child) => match child.try_wait() {
                Ok(Some(status)) if status.success() => Some(EndedBy::LoadFinished),
                Ok(Some(status)) => {
                    self.error = Some(RunError::Load {
                        label: self.label.clone(),
                        status,
                        log: self.load_log.clone(),
                    });
                    Some(EndedBy::LoadFailed)
                }
                _ => None,
            },
        }
    }
}

impl<K: Kernel, H: Host> Policy<K, H> for Measure<'_> {
    fn on_tick(&mut self, engine: &mut Engine<K, H>, exited: &[u32]) -> Step {
        let second = self.last_second.elapsed() >= Duration::from_secs(1);
        if second {
            self.last_second = Instant::now();
            self.poll_counter();
        }
        self.read_output();
        self.sample_memory(engine, second);
        if exited.contains(&self.pid) {
            self.ended = engine.target(self.pid).and_then(|t| t.exit);
            return Step::Stop(EndedBy::ProgramExited);
        }
        if let Some(why) = self.drive_load() {
            return Step::Stop(why);
        }
        if self.duration.is_some_and(|d| self.started.elapsed() >= d) {
            return Step::Stop(EndedBy::Duration);
        }
        Step::Continue
    }
}

/// A pipe for the program's standard output: (read end, non-blocking; write end).
fn output_pipe() -> std::io::Result<(std::fs::File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The program's end blocks as usual.
    // SAFETY: fcntl on our own descriptor.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, 0) };
    Ok((std::fs::File::from(r), w))
}

/// Stops a program that still runs: SIGTERM, then SIGKILL after 3 s.
fn stop(pid: u32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if crate::host::launch::try_wait(pid).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = crate::host::launch::try_wait(pid);
}

/// Makes one run.
pub fn run(spec: &RunSpec<'_>) -> Result<RunOutcome, RunError> {
    let io = |what| {
        let label = spec.label.clone();
        move |source| RunError::Io {
            label,
            what,
            source,
        }
    };
    std::fs::create_dir_all(&spec.dir).map_err(io("creating its directory"))?;
    let lens = match spec.metric {
        Metric::Rss => Lens::Rss,
        Metric::Heap => Lens::Heap,
        Metric::Alloc => Lens::Alloc,
    };
    let mut opts = Options::new(vec![lens]);
    opts.holds = true;
    opts.memprofile_rate = spec.memprofile_rate;
    let (read, write) = output_pipe().map_err(io("a pipe for its output"))?;
    let launch = Targets::Launch {
        argv: spec.argv.to_vec(),
        stdout: Some(write),
    };
    let prepared = Session::prepare(opts, launch)?;
    let target = &prepared.targets()[0];
    let pid = target.pid;
    if spec.metric == Metric::Heap
        && target
            .bin
            .gc
            .as_ref()
            .map_or(true, |g| g.heap_marked.is_none())
    {
        // Dropped before starting: the held program is killed.
        drop(prepared);
        return Err(RunError::NoHeap {
            label: spec.label.clone(),
        });
    }
    let mut session = prepared.start()?;
    let mut measure = Measure {
        label: spec.label.clone(),
        pid,
        started: Instant::now(),
        started_ns: monotonic_ns(),
        duration: spec.duration.map(Duration::from_secs_f64),
        metric: spec.metric,
        requests: spec.requests,
        output: Some(std::io::BufReader::new(read)),
        log: std::fs::File::create(spec.dir.join("program.log")).map_err(io("its log"))?,
        load: spec.load,
        load_child: None,
        load_log: spec.dir.join("load.log"),
        last_second: Instant::now(),
        gc_seen: 0,
        last_gc: None,
        samples: Samples::default(),
        error: None,
        ended: None,
    };
    let why = session.run(&mut measure).map_err(io("tracing"))?;
    measure.read_output();
    if let Some(mut c) = measure.load_child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut engine = session.finish();
    let secs = engine.window_secs();
    let report = engine.report(None, why);
    let still_running = measure.ended.is_none();
    if still_running {
        stop(pid);
    }
    crate::render::report::write_report(&spec.dir, &report, FrameMode::Func).map_err(|e| {
        RunError::Io {
            label: spec.label.clone(),
            what: "writing its report",
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    let samples_json = serde_json::to_vec_pretty(&measure.samples).unwrap_or_default();
    std::fs::write(spec.dir.join("samples.json"), samples_json).map_err(io("writing samples"))?;
    if let Some(e) = measure.error.take() {
        return Err(e);
    }
    if let Some(exit) = measure.ended.filter(|e| e.code != Some(0)) {
        return Err(RunError::Crashed {
            label: spec.label.clone(),
            how: exit.describe(),
        });
    }
    Ok(RunOutcome {
        requests: measure.samples.requests.last().map(|r| r.1),
        profile: report.profiles.into_iter().find(|p| p.lens == lens),
        samples: measure.samples,
        secs,
    })
}
