//! The engine's side of a report's lens calls: symbolizing cells into a
//! profile, and the [`Window`] a lens reads to write its extras.

use std::collections::{BTreeMap, HashMap};

use super::target::Target;
use crate::binary::symbolize::{Image, Symbolizer};
use crate::lens::cell::Cell;
use crate::lens::instance::Window;
use crate::model::extras::SampledSince;
use crate::model::labels::LabelSets;
use crate::model::lens::Lens;
use crate::model::profile::Profile;
use crate::model::stack::{StackKey, StackTable};
use crate::render::report::build_profile;

/// What turns cells into a profile: the interned stacks and label sets,
/// the symbolizer and the targets' images.
pub(super) struct Symbolize<'a> {
    pub stacks: &'a StackTable,
    pub sets: &'a LabelSets,
    pub sym: &'a mut Symbolizer,
    pub images: &'a HashMap<u32, (String, Image)>,
    pub secs: f64,
}

impl Symbolize<'_> {
    /// `cells` as a profile of `lens` over the window, `target` naming
    /// what was traced.
    pub fn profile(
        &mut self,
        lens: Lens,
        cells: &HashMap<StackKey, Cell>,
        target: String,
    ) -> Profile {
        let (stacks, sets) = (self.stacks, self.sets);
        let stack_of = |s| {
            let labels = stacks.label_set(s).map(|id| sets.get(id).to_vec());
            (
                stacks.frames(s).map(<[u64]>::to_vec),
                labels.unwrap_or_default(),
            )
        };
        let mut p = build_profile(
            lens,
            cells,
            self.images,
            &stack_of,
            self.sym,
            self.secs,
            target,
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        p.time_nanos = now - (self.secs * 1e9) as i64;
        p
    }
}

/// A report's window as the lenses see it.
pub(super) struct EngineWindow<'a> {
    pub pids: &'a [u32],
    pub targets: &'a BTreeMap<u32, Target>,
    pub whole_trace: bool,
    pub sampling: (u64, SampledSince),
    pub sym: Symbolize<'a>,
    pub warnings: &'a mut Vec<String>,
}

impl Window for EngineWindow<'_> {
    fn pids(&self) -> &[u32] {
        self.pids
    }

    fn whole_trace(&self) -> bool {
        self.whole_trace
    }

    fn vmrss(&self) -> (u64, u64) {
        self.pids
            .iter()
            .filter_map(|p| self.targets.get(p))
            .fold((0, 0), |(s, e), t| {
                let now = t.timeline.last().map_or(0, |p| p.vm_rss);
                (s + t.vmrss_start.unwrap_or(0), e + now)
            })
    }

    fn sampling(&self) -> (u64, SampledSince) {
        self.sampling
    }

    fn heap_live(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|p| self.targets.get(p)?.final_state.as_ref()?.heap_live)
            .sum()
    }

    fn goroutine_stack_bytes(&self, pid: u32, g: u64) -> Option<u64> {
        let f = self.targets.get(&pid)?.final_state.as_ref()?;
        Some(f.goroutine_stacks.get(&g).copied().unwrap_or(0))
    }

    fn live_goroutines(&self, pid: u32) -> Vec<(f64, usize)> {
        self.targets
            .get(&pid)
            .map(|t| t.live_goroutines.clone())
            .unwrap_or_default()
    }

    fn profile(&mut self, lens: Lens, cells: &HashMap<StackKey, Cell>) -> Profile {
        self.sym.profile(lens, cells, String::new())
    }

    fn warn(&mut self, text: String) {
        self.warnings.push(text);
    }
}
