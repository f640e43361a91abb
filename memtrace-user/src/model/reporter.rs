//! Where a session's progress and warnings go. The front end supplies the
//! reporter (the terminal for `record`, the log for the agent, a
//! collector in tests); the engine, the lenses and the eBPF programs'
//! log (`--ebpf-log`) all speak through it.

use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something the reader of the report should know.
    Warning,
    /// What memtrace did or is doing (it wrote into a target, it waits).
    Progress,
    /// A rare path an eBPF program took (logged with `--ebpf-log`).
    Ebpf,
}

/// Takes a session's messages.
pub trait Reporter: Send + Sync + Debug {
    /// One message, without a trailing newline.
    fn report(&self, kind: Kind, text: &str);

    /// A warning.
    fn warn(&self, text: &str) {
        self.report(Kind::Warning, text);
    }

    /// Progress.
    fn progress(&self, text: &str) {
        self.report(Kind::Progress, text);
    }
}

impl<R: Reporter + ?Sized> Reporter for &R {
    fn report(&self, kind: Kind, text: &str) {
        (**self).report(kind, text);
    }
}

impl<R: Reporter + ?Sized> Reporter for std::sync::Arc<R> {
    fn report(&self, kind: Kind, text: &str) {
        (**self).report(kind, text);
    }
}

/// One line on stderr each, `memtrace: ` first, as the CLI has always
/// written them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

impl Reporter for Stderr {
    fn report(&self, kind: Kind, text: &str) {
        match kind {
            Kind::Warning => eprintln!("memtrace: warning: {text}"),
            Kind::Progress => eprintln!("memtrace: {text}"),
            Kind::Ebpf => eprintln!("memtrace: ebpf: {text}"),
        }
    }
}

/// Keeps every message, for tests and for a front end that shows them
/// later.
#[derive(Debug, Default)]
pub struct Collect(Mutex<Vec<(Kind, String)>>);

impl Collect {
    /// The messages so far.
    pub fn messages(&self) -> Vec<(Kind, String)> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Reporter for Collect {
    fn report(&self, kind: Kind, text: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.push((kind, text.to_string()));
        }
    }
}

/// At most `per_second` messages a second through to `inner`; the rest
/// are counted and said as one line when the next second begins (or when
/// this is dropped). The eBPF log goes through one: a program that fails
/// every stack walk must not flood stderr or stall the session.
#[derive(Debug)]
pub struct Limited<R: Reporter> {
    inner: R,
    per_second: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    passed: u32,
    suppressed: u64,
}

impl<R: Reporter> Limited<R> {
    pub fn new(inner: R, per_second: u32) -> Self {
        Self {
            inner,
            per_second,
            state: Mutex::new(Window {
                start: Instant::now(),
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    /// [`Reporter::report`] at time `now`.
    pub fn report_at(&self, kind: Kind, text: &str, now: Instant) {
        let Ok(mut w) = self.state.lock() else {
            return;
        };
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            self.say_suppressed(&mut w, kind);
            w.start = now;
            w.passed = 0;
        }
        if w.passed < self.per_second {
            w.passed += 1;
            self.inner.report(kind, text);
        } else {
            w.suppressed += 1;
        }
    }

    fn say_suppressed(&self, w: &mut Window, kind: Kind) {
        if w.suppressed > 0 {
            let n = std::mem::take(&mut w.suppressed);
            self.inner.report(
                kind,
                &format!(
                    "{n} more lines like these were left out (at most {} a second)",
                    self.per_second
                ),
            );
        }
    }
}

impl<R: Reporter> Reporter for Limited<R> {
    fn report(&self, kind: Kind, text: &str) {
        self.report_at(kind, text, Instant::now());
    }
}

impl<R: Reporter> Drop for Limited<R> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.state.lock() {
            self.say_suppressed(&mut w, Kind::Ebpf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_reporter_passes_a_few_a_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let l = Limited::new(Collect::default(), 2);
        for i in 0..5 {
            l.report_at(Kind::Ebpf, &format!("m{i}"), t0);
        }
        l.report_at(Kind::Ebpf, "next", t0 + Duration::from_millis(1500));
        l.report_at(Kind::Ebpf, "again", t0 + Duration::from_millis(1600));
        l.report_at(Kind::Ebpf, "over", t0 + Duration::from_millis(1700));
        let texts: Vec<String> = l.inner.messages().into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            texts,
            vec![
                "m0",
                "m1",
                "3 more lines like these were left out (at most 2 a second)",
                "next",
                "again"
            ]
        );
        let inner = Collect::default();
        {
            let l = Limited::new(&inner, 1);
            l.report_at(Kind::Ebpf, "a", t0);
            l.report_at(Kind::Ebpf, "b", t0);
        }
        assert_eq!(inner.messages().len(), 2, "the count is said when dropped");
    }

    #[test]
    fn a_collector_keeps_each_kind() {
        let c = Collect::default();
        c.warn("w");
        c.progress("p");
        c.report(Kind::Ebpf, "e");
        assert_eq!(
            c.messages(),
            vec![
                (Kind::Warning, "w".to_string()),
                (Kind::Progress, "p".to_string()),
                (Kind::Ebpf, "e".to_string())
            ]
        );
    }
}
