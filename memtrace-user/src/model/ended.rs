//! What ended a session or a window: typed, and written into
//! `summary.json`'s `ended_by` as the same words as ever.

use std::fmt;

/// What ended a session (`record`, `gate`, `top`) or one of the agent's
/// windows and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndedBy {
    /// `--duration` ran out.
    Duration,
    /// Every target exited (`record`, `top`).
    EveryTargetExited,
    /// The gate's program exited.
    ProgramExited,
    SigInt,
    SigTerm,
    /// The OOM killer chose the target.
    OomKill,
    /// The agent's snapshot near the memory cgroup's limit.
    Limit,
    /// The agent's snapshot on RSS growth.
    Snapshot,
    /// The agent's rolling window.
    Window,
    /// The gate's load command finished.
    LoadFinished,
    /// The gate's load command failed.
    LoadFailed,
    /// The gate's load command could not start.
    LoadDidNotStart,
    /// The gate's service never listened.
    NeverListened,
    /// `top`: a process's live view.
    Top,
    /// `top`: the report saved with `s`.
    TopSaved,
    /// `top`: `q` or Esc.
    Quit,
    /// `top`: Ctrl-C at the keyboard.
    CtrlC,
}

impl EndedBy {
    /// The words `summary.json` and the terminal use.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Duration => "duration",
            EndedBy::EveryTargetExited => "every target exited",
            EndedBy::ProgramExited => "the program exited",
            EndedBy::SigInt => "SIGINT",
            EndedBy::SigTerm => "SIGTERM",
            EndedBy::OomKill => "oom_kill",
            EndedBy::Limit => "limit",
            EndedBy::Snapshot => "snapshot",
            EndedBy::Window => "window",
            EndedBy::LoadFinished => "the load finished",
            EndedBy::LoadFailed => "the load failed",
            EndedBy::LoadDidNotStart => "the load command did not start",
            EndedBy::NeverListened => "the service never listened",
            EndedBy::Top => "top",
            EndedBy::TopSaved => "top: saved",
            EndedBy::Quit => "q",
            EndedBy::CtrlC => "Ctrl-C",
        }
    }

    /// A report that holds what the target filled its memory with over the
    /// whole trace, not one window's growth: at a kill or near a limit.
    pub fn wants_whole_trace(self) -> bool {
        matches!(self, EndedBy::OomKill | EndedBy::Limit)
    }
}

impl fmt::Display for EndedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for EndedBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_is_written_as_before() {
        assert_eq!(
            serde_json::to_string(&EndedBy::EveryTargetExited).unwrap(),
            "\"every target exited\""
        );
        assert_eq!(EndedBy::SigTerm.to_string(), "SIGTERM");
        assert!(EndedBy::OomKill.wants_whole_trace() && !EndedBy::Window.wants_whole_trace());
    }
}
