//! Where a session's progress and warnings go. The front end supplies the
//! reporter (the terminal for `record`, the log for the agent, a
//! collector in tests); the engine, the lenses and the eBPF programs'
//! log (`--ebpf-log`) all speak through it.

use std::fmt::Debug;
use std::sync::Mutex;

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

#[cfg(test)]
mod tests {
    use super::*;

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
