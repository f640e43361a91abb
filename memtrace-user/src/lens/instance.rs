//! A lens as the engine sees it, in the spirit of the OpenTelemetry
//! profiler's `interpreter.Instance`: one object per requested lens that
//! takes the session's events, gives its cells, forgets a process, starts a
//! new window and writes its extras. The engine calls these methods and
//! never asks which lens it holds; each lens implements them in its own
//! module.

use std::collections::HashMap;

use crate::kernel::decode::Resolved;
use crate::lens::cell::Cell;
use crate::model::extras::{LensExtras, SampledSince};
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use crate::model::stack::{StackKey, StackTable};

/// One requested lens of a session.
pub trait Instance {
    /// Which lens this is.
    fn lens(&self) -> Lens;

    /// Takes one resolved event of a traced process. A lens reads the
    /// kinds it needs and ignores the rest.
    fn apply(&mut self, _event: &Resolved) {}

    /// The window's cells for `pids` (`whole_trace`: the whole trace's,
    /// where the lens keeps more than a window). `None` for a lens that
    /// reads the runtime's profile, whose cells the engine reads from each
    /// target.
    fn cells(
        &self,
        pids: &[u32],
        whole_trace: bool,
        stacks: &mut StackTable,
    ) -> Option<HashMap<StackKey, Cell>>;

    /// Drops everything kept for `pid` (it exited, or execs another program).
    fn forget(&mut self, _pid: u32) {}

    /// Starts a new window.
    fn rotate(&mut self) {}

    /// The lens's figures beyond its profile, for `summary.json`; `profile`
    /// is the lens's profile of the window.
    fn extras(&self, profile: &Profile, window: &mut dyn Window) -> Option<LensExtras>;
}

/// What a lens may read of the window and the engine's targets to write
/// its extras. The engine implements it; unit tests use a fake.
pub trait Window {
    /// The processes the report covers.
    fn pids(&self) -> &[u32];
    /// Whether the report shows the whole trace rather than the window.
    fn whole_trace(&self) -> bool;
    /// VmRSS when tracing began and now, summed over [`Window::pids`].
    fn vmrss(&self) -> (u64, u64);
    /// The runtime's memory-profile rate and since when it sampled.
    fn sampling(&self) -> (u64, SampledSince);
    /// The Go heap's live bytes at the end, summed over the processes.
    fn heap_live(&self) -> u64;
    /// The stack bytes of goroutine `g` of `pid` at the end (0 when not
    /// read), `None` when `pid`'s end state was not read at all.
    fn goroutine_stack_bytes(&self, pid: u32, g: u64) -> Option<u64>;
    /// `pid`'s live goroutines each second: (seconds, count).
    fn live_goroutines(&self, pid: u32) -> Vec<(f64, usize)>;
    /// `cells` symbolized as a profile of `lens` (no title).
    fn profile(&mut self, lens: Lens, cells: &HashMap<StackKey, Cell>) -> Profile;
    /// A caveat for the report's reader.
    fn warn(&mut self, text: String);
}

/// `cells` with only the keys of `pids`.
pub fn of_pids<V: Clone>(cells: &HashMap<StackKey, V>, pids: &[u32]) -> HashMap<StackKey, V> {
    cells
        .iter()
        .filter(|(k, _)| pids.contains(&k.0))
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::Op;
    use crate::lens::aggregate::Aggregator;
    use crate::lens::rss::Thp;

    /// A window over fixed figures, recording what a lens asks of it.
    #[derive(Default)]
    struct FakeWindow {
        pids: Vec<u32>,
        since: Option<SampledSince>,
        heap_live: u64,
        warnings: Vec<String>,
        profiled: Vec<u64>,
    }

    impl Window for FakeWindow {
        fn pids(&self) -> &[u32] {
            &self.pids
        }
        fn whole_trace(&self) -> bool {
            false
        }
        fn vmrss(&self) -> (u64, u64) {
            (100, 250)
        }
        fn sampling(&self) -> (u64, SampledSince) {
            (4096, self.since.unwrap_or(SampledSince::Start))
        }
        fn heap_live(&self) -> u64 {
            self.heap_live
        }
        fn goroutine_stack_bytes(&self, _: u32, _: u64) -> Option<u64> {
            Some(8192)
        }
        fn live_goroutines(&self, pid: u32) -> Vec<(f64, usize)> {
            vec![(1.0, pid as usize)]
        }
        fn profile(&mut self, lens: Lens, cells: &HashMap<StackKey, Cell>) -> Profile {
            let total = cells.values().map(|c| c.bytes).sum();
            self.profiled.push(total);
            let names = ["f".to_string()];
            Profile::from_names(lens, [(&names[..], total, 0)], 1.0, String::new())
        }
        fn warn(&mut self, text: String) {
            self.warnings.push(text);
        }
    }

    fn event(pid: u32, stack: u32, op: Op) -> Resolved {
        Resolved {
            key: (pid, crate::model::stack::Stack::Id(stack)),
            op,
            ts: 1,
            labels: (0, 0),
        }
    }

    #[test]
    fn the_aggregator_routes_events_and_forgets_through_each_lens() {
        let lenses = [
            Lens::Rss,
            Lens::Mmap,
            Lens::AllocExact,
            Lens::Goroutines,
            Lens::Heap,
        ];
        let mut agg = Aggregator::new(&lenses, Thp::Never);
        let mut stacks = StackTable::default();
        for pid in [7, 8] {
            agg.apply(&event(
                pid,
                1,
                Op::Alloc {
                    size: 24,
                    class: memtrace_common::AllocType::NoScan,
                },
            ));
            agg.apply(&event(
                pid,
                2,
                Op::Mmap {
                    addr: 0x10_0000,
                    len: 8192,
                    prot: 3,
                },
            ));
            agg.apply(&event(
                pid,
                3,
                Op::Fault {
                    addr: 0x10_0000,
                    len: 4096,
                },
            ));
            agg.apply(&event(
                pid,
                4,
                Op::GoCreate {
                    g: 0xc000,
                    start_pc: 0x401000,
                },
            ));
        }
        let bytes = |agg: &Aggregator, lens, stacks: &mut StackTable| -> u64 {
            let cells = agg.cells(lens, &[7, 8], stacks).unwrap();
            cells.values().map(|c| c.bytes).sum()
        };
        assert_eq!(bytes(&agg, Lens::AllocExact, &mut stacks), 2 * 24);
        assert_eq!(bytes(&agg, Lens::Mmap, &mut stacks), 2 * 8192);
        assert_eq!(bytes(&agg, Lens::Rss, &mut stacks), 2 * 4096);
        assert_eq!(bytes(&agg, Lens::Goroutines, &mut stacks), 2);
        assert!(
            agg.cells(Lens::Heap, &[7], &mut stacks).is_none(),
            "read from the runtime"
        );
        assert!(agg.instance(Lens::Alloc).is_none(), "not requested");
        agg.forget(7);
        for lens in [Lens::AllocExact, Lens::Mmap, Lens::Rss, Lens::Goroutines] {
            let cells = agg.cells(lens, &[7, 8], &mut stacks).unwrap();
            assert!(cells.keys().all(|k| k.0 == 8), "{lens} kept pid 7");
            assert!(!cells.is_empty(), "{lens} lost pid 8");
        }
    }

    #[test]
    fn a_lens_writes_its_extras_from_the_window() {
        let agg = Aggregator::new(&[Lens::Heap, Lens::Rss], Thp::Never);
        let names = ["f".to_string()];
        let heap = Profile::from_names(Lens::Heap, [(&names[..], 300, 3)], 1.0, String::new());
        let mut w = FakeWindow {
            pids: vec![7],
            since: Some(SampledSince::Attach),
            heap_live: 1200,
            ..FakeWindow::default()
        };
        let Some(LensExtras::Sampled(e)) = agg.instance(Lens::Heap).unwrap().extras(&heap, &mut w)
        else {
            panic!("heap writes sampled extras");
        };
        assert_eq!(
            (e.sample_rate_bytes, e.heap_live_coverage),
            (4096, Some(0.25))
        );
        assert_eq!(
            w.warnings.len(),
            1,
            "sampling began at attach: {:?}",
            w.warnings
        );
        assert!(w.warnings[0].contains("25%"), "{:?}", w.warnings);
        let rss = agg.instance(Lens::Rss).unwrap().extras(&heap, &mut w);
        let Some(LensExtras::Rss(r)) = rss else {
            panic!("rss writes rss extras");
        };
        assert_eq!((r.vmrss_start, r.vmrss_growth), (100, 150));
    }

    #[test]
    fn the_goroutines_lens_profiles_its_sites_through_the_window() {
        let mut agg = Aggregator::new(&[Lens::Goroutines], Thp::Never);
        agg.apply(&event(7, 1, Op::GoCreate { g: 1, start_pc: 0 }));
        agg.apply(&event(7, 1, Op::GoCreate { g: 2, start_pc: 0 }));
        agg.apply(&event(7, 1, Op::GoExit { g: 2 }));
        agg.apply(&event(9, 1, Op::GoCreate { g: 3, start_pc: 0 }));
        let mut w = FakeWindow {
            pids: vec![7],
            ..FakeWindow::default()
        };
        let names = ["f".to_string()];
        let live = Profile::from_names(Lens::Goroutines, [(&names[..], 1, 0)], 1.0, String::new());
        let Some(LensExtras::Goroutines(g)) = agg
            .instance(Lens::Goroutines)
            .unwrap()
            .extras(&live, &mut w)
        else {
            panic!("goroutines writes its extras");
        };
        // created, exited and live stack bytes, of pid 7 only.
        assert_eq!(w.profiled, vec![2, 1, 8192]);
        assert_eq!((g.created, g.exited), (2, 1));
        assert_eq!(g.live_over_time.len(), 1);
        assert_eq!(g.live_over_time[0].pid, 7);
    }
}
