//! Parsing executables off the engine's thread. A tenant's binary is
//! hostile input: however its tables are forged, the engine must go on
//! tracing every other process. Files are parsed one at a time (one file's
//! pages resident at once), each on a thread of its own within a time
//! budget; a parse over budget is given up and its file refused, and the
//! next one starts on a new thread. A parse that panics refuses its file
//! too.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Parsed, Process};
use crate::binary::goruntime::GoBinary;
use crate::engine::BinaryId;
use crate::model::error::TargetError;

/// How a process's executable is parsed.
pub type ParseFn = Arc<dyn Fn(&Process) -> Result<GoBinary, TargetError> + Send + Sync>;

/// The parse running now.
struct Job {
    binary: BinaryId,
    first: Process,
    started: Instant,
    done: Receiver<Result<GoBinary, TargetError>>,
}

pub(super) struct Background {
    budget: Duration,
    parse: ParseFn,
    queue: VecDeque<BinaryId>,
    /// Processes waiting for each queued or running file, in order seen.
    waiting: HashMap<BinaryId, Vec<Process>>,
    running: Option<Job>,
}

impl Background {
    pub(super) fn new(budget: Duration, parse: ParseFn) -> Self {
        Self {
            budget,
            parse,
            queue: VecDeque::new(),
            waiting: HashMap::new(),
            running: None,
        }
    }

    /// Queues `p`'s executable, unless it is queued or running already.
    pub(super) fn submit(&mut self, p: Process) {
        let w = self.waiting.entry(p.binary).or_default();
        if w.is_empty() {
            self.queue.push_back(p.binary);
        }
        if !w.iter().any(|q| q.pid == p.pid) {
            w.push(p);
        }
    }

    /// Files finished (or given up) since the last call; starts the next.
    pub(super) fn poll(&mut self) -> Vec<Parsed> {
        let mut out = Vec::new();
        loop {
            if let Some(job) = &self.running {
                let result = match job.done.try_recv() {
                    Ok(r) => r.map(Arc::new),
                    Err(TryRecvError::Empty) if job.started.elapsed() < self.budget => break,
                    Err(TryRecvError::Empty) => Err(TargetError::Read {
                        path: job.first.exe.clone(),
                        reason: format!(
                            "parsing took over {} s and was given up (a forged table?)",
                            self.budget.as_secs_f64()
                        ),
                    }),
                    Err(TryRecvError::Disconnected) => Err(TargetError::Read {
                        path: job.first.exe.clone(),
                        reason: "its parser failed (a forged table?)".into(),
                    }),
                };
                let binary = job.binary;
                self.running = None;
                out.push(Parsed {
                    binary,
                    waiting: self.waiting.remove(&binary).unwrap_or_default(),
                    result: match result {
                        Ok(b) => Ok(Some(b)),
                        Err(TargetError::NotGo(_)) => Ok(None),
                        Err(e) => Err(e),
                    },
                });
            }
            let Some(binary) = self.queue.pop_front() else {
                break;
            };
            let Some(first) = self.waiting.get(&binary).and_then(|w| w.first()).cloned() else {
                continue;
            };
            self.running = Some(self.start(binary, first));
        }
        out
    }

    fn start(&self, binary: BinaryId, first: Process) -> Job {
        let (tx, done) = mpsc::channel();
        let (parse, p) = (self.parse.clone(), first.clone());
        let spawned = std::thread::Builder::new()
            .name("memtrace-parse".into())
            .spawn(move || {
                let _ = tx.send(parse(&p));
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a parser thread: {e}");
        }
        Job {
            binary,
            first,
            started: Instant::now(),
            done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::super::{Binaries, Found};
    use super::*;

    fn process(pid: u32, ino: u64) -> Process {
        Process {
            pid,
            exe: PathBuf::from(format!("/bin/p{ino}")),
            via: PathBuf::from(format!("/proc/{pid}/exe")),
            binary: BinaryId { dev: 1, ino },
        }
    }

    /// Parses inode 1 forever (until released), every other file at once.
    fn parser(release: Arc<AtomicBool>) -> ParseFn {
        Arc::new(move |p: &Process| {
            if p.binary.ino == 1 {
                while !release.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if p.binary.ino == 3 {
                panic!("a parser bug on forged input");
            }
            Ok(GoBinary::for_tests(&p.exe.display().to_string()))
        })
    }

    fn poll_until(bins: &mut Binaries, n: usize) -> Vec<Parsed> {
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < n && start.elapsed() < Duration::from_secs(20) {
            out.extend(bins.poll());
            std::thread::sleep(Duration::from_millis(5));
        }
        out
    }

    #[test]
    fn a_parse_that_never_ends_is_given_up_and_the_next_file_is_parsed() {
        let release = Arc::new(AtomicBool::new(false));
        let mut bins = Binaries::with_parser(Duration::from_millis(200), parser(release.clone()));
        let (stuck, other, again) = (process(10, 1), process(20, 2), process(11, 1));
        assert!(matches!(bins.of(&stuck), Ok(Found::Pending)));
        assert!(matches!(bins.of(&other), Ok(Found::Pending)));
        assert!(matches!(bins.of(&again), Ok(Found::Pending)));
        let t0 = Instant::now();
        let done = poll_until(&mut bins, 2);
        release.store(true, Ordering::Relaxed);
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(done.len(), 2, "{done:?}");
        let first = &done[0];
        assert_eq!(first.binary, BinaryId { dev: 1, ino: 1 });
        let pids: Vec<u32> = first.waiting.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [10, 11], "both processes of the file wait for it");
        let e = first.result.as_ref().unwrap_err().to_string();
        assert!(e.contains("/bin/p1") && e.contains("given up"), "{e}");
        assert!(matches!(done[1].result, Ok(Some(_))), "{:?}", done[1]);
        // Remembered: the refused file is not parsed again.
        assert!(matches!(bins.of(&stuck), Ok(Found::NotGo)));
        assert!(matches!(bins.of(&other), Ok(Found::Go(_))));
    }

    #[test]
    fn a_parser_that_panics_refuses_its_file_and_the_worker_goes_on() {
        let mut bins = Binaries::with_parser(
            Duration::from_secs(10),
            parser(Arc::new(AtomicBool::new(true))),
        );
        assert!(matches!(bins.of(&process(30, 3)), Ok(Found::Pending)));
        assert!(matches!(bins.of(&process(40, 4)), Ok(Found::Pending)));
        let done = poll_until(&mut bins, 2);
        assert_eq!(done.len(), 2);
        assert!(done[0]
            .result
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("parser failed"));
        assert!(matches!(done[1].result, Ok(Some(_))));
    }
}
