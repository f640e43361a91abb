//! The GC view as `summary.json` has it: cycles with the heap at each, and
//! the stop-the-world pauses. Built by `lens::gc::summary`; read by the
//! terminal, the HTML page, `top` and the agent.

use serde::Serialize;

/// GC cycles and stop-the-world pauses of a window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GcSummary {
    /// Every cycle, in time order.
    pub cycle_detail: Vec<GcCycleDetail>,
    pub cycles: u64,
    pub pauses: GcPauses,
}

/// One cycle, at mark termination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GcCycleDetail {
    /// The heap size the GC aimed to stay under.
    pub heap_goal: u64,
    /// The heap at mark termination.
    pub heap_live: u64,
    /// Marked live by the previous cycle: the live heap after it.
    pub heap_marked: u64,
    pub pid: u32,
    /// Seconds from the window's start.
    pub t: f64,
}

/// Stop-the-world pauses: how many, and their quantiles (nanoseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcPauses {
    pub count: u64,
    pub max_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

impl GcSummary {
    /// The last cycle of the window, if there was one.
    pub fn last(&self) -> Option<&GcCycleDetail> {
        self.cycle_detail.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_json_keeps_its_shape() {
        let s = GcSummary {
            cycle_detail: vec![GcCycleDetail {
                heap_goal: 4,
                heap_live: 3,
                heap_marked: 2,
                pid: 7,
                t: 0.5,
            }],
            cycles: 1,
            pauses: GcPauses {
                count: 2,
                max_ns: 9,
                p50_ns: 5,
                p99_ns: 8,
            },
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"cycle_detail":[{"heap_goal":4,"heap_live":3,"heap_marked":2,"pid":7,"t":0.5}],"cycles":1,"pauses":{"count":2,"max_ns":9,"p50_ns":5,"p99_ns":8}}"#
        );
        assert_eq!(s.last().map(|c| c.pid), Some(7));
    }
}
