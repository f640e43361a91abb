//! The `goroutines` lens: live goroutines by creation site (the `go`
//! statement's stack, with the start function as leaf), with created and
//! exited counts; goroutines that predate tracing are read from
//! `runtime.allgs`.

use crate::model::extras::GoroutineExtras;
use crate::model::extras::LiveOverTime;
use crate::model::extras::LivePoint;
use crate::model::extras::Site;
use std::collections::{BTreeMap, HashMap};

use crate::binary::goruntime::GoBinary;
use crate::binary::gtypes::{G_DEAD, G_SCAN};
use crate::binary::symbolize::EXISTING_GOROUTINE;
use crate::host::remote::RemoteMemory;
use crate::kernel::decode::{Op, Resolved};
use crate::lens::cell::Cell;
use crate::lens::instance::{of_pids, Instance, Window};
use crate::model::extras::LensExtras;
use crate::model::lens::Lens;
use crate::model::profile::{FrameMode, Profile};
use crate::model::stack::{StackKey, StackTable};

/// `goroutines`: live goroutines by creation stack (the `go` statement's,
/// with the start function as leaf). Created and exited counts per stack.
#[derive(Default)]
pub struct GoroutineAgg {
    pub(crate) live: HashMap<(u32, u64), StackKey>,
    pub created: HashMap<StackKey, u64>,
    pub exited: HashMap<StackKey, u64>,
    /// Exits of goroutines neither seen created nor listed at attach.
    pub unknown_exits: u64,
}

impl GoroutineAgg {
    pub fn create(&mut self, key: StackKey, g: u64) {
        self.live.insert((key.0, g), key);
        *self.created.entry(key).or_default() += 1;
    }

    /// A goroutine that existed before tracing began.
    pub fn existing(&mut self, key: StackKey, g: u64) {
        self.live.entry((key.0, g)).or_insert(key);
    }

    pub fn exit(&mut self, pid: u32, g: u64) {
        match self.live.remove(&(pid, g)) {
            Some(k) => *self.exited.entry(k).or_default() += 1,
            None => self.unknown_exits += 1,
        }
    }

    pub fn live_count(&self, pid: u32) -> usize {
        self.live.keys().filter(|(p, _)| *p == pid).count()
    }

    /// Live goroutines (`bytes` holds the count) by creation stack.
    pub fn by_stack(&self) -> HashMap<StackKey, Cell> {
        let mut out: HashMap<StackKey, Cell> = HashMap::new();
        for k in self.live.values() {
            out.entry(*k).or_default().bytes += 1;
        }
        out
    }

    /// Live goroutine pointers of a process.
    pub fn live_of(&self, pid: u32) -> impl Iterator<Item = (u64, StackKey)> + '_ {
        self.live
            .iter()
            .filter(move |((p, _), _)| *p == pid)
            .map(|((_, g), k)| (*g, *k))
    }
}

/// Adds the target's live goroutines to `agg`, keyed by a stack of their
/// start function, the `go` statement's pc and a "[created before tracing]"
/// root. `allgs` is the runtime address of the `runtime.allgs` slice.
/// Returns how many were found.
pub fn add_existing(
    pid: u32,
    bin: &GoBinary,
    mem: &dyn RemoteMemory,
    allgs: u64,
    stacks: &mut StackTable,
    agg: &mut GoroutineAgg,
) -> std::io::Result<usize> {
    let mut found = 0;
    each_g(mem, allgs, |g| {
        let frames = match bin.g_layout {
            Some(l) => {
                let Ok(st) = mem.read_u32(g.wrapping_add(l.atomicstatus)) else {
                    return;
                };
                let status = st & !G_SCAN;
                if status == G_DEAD || status == 0 {
                    return;
                }
                let start = mem.read_u64(g.wrapping_add(l.startpc)).unwrap_or(0);
                let gopc = mem.read_u64(g.wrapping_add(l.gopc)).unwrap_or(0);
                vec![start, gopc, EXISTING_GOROUTINE]
            }
            // Without DWARF the state is unknown: count every goroutine.
            None => vec![EXISTING_GOROUTINE],
        };
        let id = stacks.intern(pid, frames);
        agg.existing((pid, id), g);
        found += 1;
    })?;
    Ok(found)
}

/// The most goroutines read from `runtime.allgs`: its length is the
/// target's word, and each one costs a read of the target's memory.
pub const MAX_GOROUTINES: u64 = 1 << 20;

/// Calls `f` with each non-nil `*g` of the `runtime.allgs` slice at
/// `allgs`, reading the array a few thousand pointers at a time (a length
/// the target claims is never allocated whole), at most
/// [`MAX_GOROUTINES`].
pub fn each_g(mem: &dyn RemoteMemory, allgs: u64, mut f: impl FnMut(u64)) -> std::io::Result<()> {
    const CHUNK: u64 = 4096;
    let ptr = mem.read_u64(allgs)?;
    let len = mem.read_u64(allgs.wrapping_add(8))?.min(MAX_GOROUTINES);
    let mut i = 0;
    while i < len {
        let n = CHUNK.min(len - i);
        let at = ptr
            .checked_add(i * 8)
            .ok_or_else(|| std::io::Error::other("runtime.allgs runs past the address space"))?;
        for g in mem.read_words(at, n as usize)? {
            if g != 0 {
                f(g);
            }
        }
        i += n;
    }
    Ok(())
}

/// How many goroutines of the target are alive now, from `runtime.allgs`
/// (`None` without the `runtime.g` layout from DWARF, when the state of a
/// goroutine cannot be read). For `top`, without any uprobe.
pub fn count_live(
    bin: &GoBinary,
    mem: &dyn RemoteMemory,
    allgs: u64,
) -> std::io::Result<Option<u64>> {
    let Some(l) = bin.g_layout else {
        return Ok(None);
    };
    let mut live = 0;
    each_g(mem, allgs, |g| {
        if mem
            .read_u32(g.wrapping_add(l.atomicstatus))
            .is_ok_and(|st| !matches!(st & !G_SCAN, G_DEAD | 0))
        {
            live += 1;
        }
    })?;
    Ok(Some(live))
}

/// Live goroutines the runtime runs for itself, as `runtime.NumGoroutine`
/// leaves them out (`isSystemGoroutine`): those whose start function (the
/// leaf) is in package runtime, but for `runtime.main`. `total` less this
/// is what the program's own `NumGoroutine` says.
pub fn runtime_owned(live: &Profile) -> u64 {
    live.named(FrameMode::Func)
        .iter()
        .filter(|s| {
            s.names
                .last()
                .is_some_and(|f| f.starts_with("runtime.") && f != "runtime.main")
        })
        .map(|s| s.value)
        .sum()
}

impl Instance for GoroutineAgg {
    fn lens(&self) -> Lens {
        Lens::Goroutines
    }

    fn apply(&mut self, r: &Resolved) {
        match r.op {
            Op::GoCreate { g, .. } => self.create(r.key, g),
            Op::GoExit { g } => self.exit(r.key.0, g),
            _ => {}
        }
    }

    fn cells(&self, pids: &[u32], _: bool, _: &mut StackTable) -> Option<HashMap<StackKey, Cell>> {
        Some(of_pids(&self.by_stack(), pids))
    }

    fn forget(&mut self, pid: u32) {
        self.live.retain(|k, _| k.0 != pid);
        self.created.retain(|k, _| k.0 != pid);
        self.exited.retain(|k, _| k.0 != pid);
    }

    /// Per creation site, goroutines created and exited in the window and
    /// the stack bytes of the live ones; the live count every second; and
    /// how many of the live ones the runtime owns.
    fn extras(&self, live: &Profile, w: &mut dyn Window) -> Option<LensExtras> {
        let pids = w.pids().to_vec();
        let as_cells = |m: &HashMap<StackKey, u64>| -> HashMap<StackKey, Cell> {
            of_pids(m, &pids)
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        Cell {
                            bytes: v,
                            ..Cell::default()
                        },
                    )
                })
                .collect()
        };
        let mut stack_bytes: HashMap<StackKey, u64> = HashMap::new();
        for &pid in &pids {
            for (g, key) in self.live_of(pid) {
                if let Some(b) = w.goroutine_stack_bytes(pid, g) {
                    *stack_bytes.entry(key).or_default() += b;
                }
            }
        }
        let by_site: Vec<Profile> = [&self.created, &self.exited, &stack_bytes]
            .into_iter()
            .map(|m| w.profile(Lens::Goroutines, &as_cells(m)))
            .collect();
        let live_over_time = pids.iter().map(|&p| (p, w.live_goroutines(p))).collect();
        let mut e = extras(&by_site, self.unknown_exits, live_over_time);
        e.runtime_goroutines = runtime_owned(live);
        Some(LensExtras::Goroutines(e))
    }
}

/// The lens's extras in `summary.json`: per creation site (`by_site`:
/// profiles of goroutines created, exited, and the live ones' stack bytes),
/// and each process's live count over time.
fn extras(
    by_site: &[Profile],
    unknown_exits: u64,
    live_over_time: Vec<(u32, Vec<(f64, usize)>)>,
) -> GoroutineExtras {
    let mut sites: BTreeMap<Vec<String>, [u64; 3]> = BTreeMap::new();
    for (i, p) in by_site.iter().take(3).enumerate() {
        for s in p.named(FrameMode::Func) {
            sites.entry(s.names).or_default()[i] += s.value;
        }
    }
    let total = |i: usize| by_site.get(i).map_or(0, Profile::total);
    GoroutineExtras {
        created: total(0),
        exited: total(1),
        unknown_exits,
        sites: sites
            .into_iter()
            .map(|(stack, [created, exited, stack_bytes])| Site {
                stack,
                created,
                exited,
                stack_bytes,
            })
            .collect(),
        live_over_time: live_over_time
            .into_iter()
            .map(|(pid, live)| LiveOverTime {
                pid,
                live: live
                    .into_iter()
                    .map(|(t, live)| LivePoint { t, live })
                    .collect(),
            })
            .collect(),
        runtime_goroutines: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::remote::FakeMemory;
    use crate::model::stack::Stack;

    #[test]
    fn allgs_is_read_in_pieces_and_bounded() {
        let mem = FakeMemory::default();
        let gs: Vec<u64> = (0..10_000u64)
            .map(|i| if i % 3 == 0 { 0 } else { 0x10_0000 + i })
            .collect();
        mem.map_words(0x1000, &[0x8_0000, gs.len() as u64]);
        mem.map_words(0x8_0000, &gs);
        let mut seen = Vec::new();
        each_g(&mem, 0x1000, |g| seen.push(g)).unwrap();
        assert_eq!(seen.len(), gs.iter().filter(|g| **g != 0).count());
        assert_eq!(seen.last(), Some(&(0x10_0000 + 9_998)));
        // A length of 2^62 is not believed: the read stops where memory
        // ends, without an allocation of the claimed size.
        mem.map_words(0x2000, &[0x8_0000, 1 << 62]);
        assert!(each_g(&mem, 0x2000, |_| {}).is_err());
        // A slice at the top of the address space.
        mem.map_words(0x3000, &[u64::MAX - 16, 8192]);
        assert!(each_g(&mem, 0x3000, |_| {}).is_err());
    }

    #[test]
    fn the_runtimes_own_goroutines_are_told_apart() {
        use crate::model::profile::{Locations, Sample};
        let mut locs = Locations::default();
        let mut sample = |names: &[&str], n: u64| Sample {
            stack: names.iter().map(|f| locs.named(f)).collect(),
            value: n,
            ..Sample::default()
        };
        let samples = vec![
            sample(&["runtime.goexit", "main.serve", "main.handle"], 7),
            sample(&["runtime.goexit", "runtime.main"], 1),
            sample(
                &["runtime.goexit", "runtime.gcenable", "runtime.bgsweep"],
                1,
            ),
            sample(&["[created before tracing]", "runtime.forcegchelper"], 2),
        ];
        let p = Profile::new(
            crate::model::lens::Lens::Goroutines,
            locs.locations,
            Vec::new(),
            samples,
            1.0,
            String::new(),
        );
        assert_eq!(runtime_owned(&p), 3);
    }

    #[test]
    fn goroutines_live_created_exited() {
        let mut g = GoroutineAgg::default();
        g.existing((1, Stack::Id(9)), 0xa0);
        for i in 0..5 {
            g.create((1, Stack::Id(2)), 0x100 + i);
        }
        g.create((1, Stack::Id(3)), 0x200);
        g.exit(1, 0x200);
        g.exit(1, 0x100);
        g.exit(1, 0xa0);
        g.exit(1, 0xdead);
        let live = g.by_stack();
        assert_eq!(live[&(1, Stack::Id(2))].bytes, 4);
        assert!(!live.contains_key(&(1, Stack::Id(3))) && !live.contains_key(&(1, Stack::Id(9))));
        assert_eq!(g.created[&(1, Stack::Id(2))], 5);
        assert_eq!(g.exited[&(1, Stack::Id(3))], 1);
        assert_eq!(g.unknown_exits, 1);
        assert_eq!(g.live_count(1), 4);
    }
}
