//! The `alloc` and `heap` lenses: the Go runtime's own memory profile,
//! read from outside. One [`RuntimeProfile`] per target finds the
//! profile's buckets, makes sure the runtime samples during the window
//! (writing `runtime.MemProfileRate` if it is 0, announced, and restored
//! at the end), and snapshots the buckets at the start and as the window
//! goes. `alloc` is what was allocated between the first and the last
//! snapshot; `heap` is what the last one says is live.

use crate::lens::instance::{Instance, Window};
use crate::model::extras::{LensExtras, SampledExtras, SampledSince};
use crate::model::profile::{human_bytes, Profile};
use std::collections::HashMap;
use std::sync::Arc;

use crate::binary::goruntime::GoBinary;
use crate::binary::memprof::{self, Bucket};
use crate::host::procfs::MapEntry;
use crate::host::remote::RemoteMemory;
use crate::lens::cell::Cell;
use crate::model::error::TargetError;
use crate::model::lens::Lens;
use crate::model::reporter::Reporter;
use crate::model::stack::{StackKey, StackTable};

pub struct RuntimeProfile {
    pid: u32,
    link_rate: u64,
    link_mbuckets: u64,
    cycle_words: usize,
    want_rate: u64,
    addrs: Option<(u64, u64)>,
    /// The rate the target had when memtrace replaced it.
    replaced: Option<u64>,
    /// The sampling rate in effect (bytes per sample, on average).
    pub rate: u64,
    pub start: Option<Vec<Bucket>>,
    pub last: Option<Vec<Bucket>>,
    pub since: SampledSince,
    /// Where it says that it wrote the rate, and whether it restored it.
    reporter: Arc<dyn Reporter>,
}

impl RuntimeProfile {
    /// Checks that the binary exposes what the lenses need.
    pub fn new(
        pid: u32,
        bin: &GoBinary,
        want_rate: u64,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Self, TargetError> {
        let missing = |symbol: &str| bin.missing(symbol, "alloc and heap lenses");
        Ok(Self {
            pid,
            link_rate: bin
                .mem_profile_rate
                .ok_or_else(|| missing("runtime.MemProfileRate"))?,
            link_mbuckets: bin.mbuckets.ok_or_else(|| missing("runtime.mbuckets"))?,
            cycle_words: memprof::cycle_words(&bin.go_version).ok_or_else(|| {
                TargetError::Read {
                    path: bin.path.clone(),
                    reason: format!(
                        "unknown Go version {:?} for the runtime memory profile",
                        bin.go_version
                    ),
                }
            })?,
            want_rate,
            addrs: None,
            replaced: None,
            rate: 0,
            start: None,
            last: None,
            since: SampledSince::Start,
            reporter,
        })
    }

    pub fn started(&self) -> bool {
        self.addrs.is_some()
    }

    /// The rate memtrace replaced, with its address: what must be written
    /// back if memtrace dies.
    pub fn restore_point(&self) -> Option<(u64, u64)> {
        Some((self.addrs?.0, self.replaced?))
    }

    fn snapshot(&self, mem: &dyn RemoteMemory) -> std::io::Result<Vec<Bucket>> {
        let (_, mbuckets) = self
            .addrs
            .ok_or_else(|| std::io::Error::other("profile not started"))?;
        memprof::read_buckets(mem, mbuckets, self.cycle_words)
    }

    /// Starts sampling (if needed) and takes the first snapshot; `from_exec`
    /// counts everything since the program started (launch mode, held
    /// before any user code ran) instead of since now.
    pub fn start(
        &mut self,
        mem: &dyn RemoteMemory,
        bin: &GoBinary,
        exe_maps: &[MapEntry],
        from_exec: bool,
    ) -> std::io::Result<()> {
        let mapped = || std::io::Error::other("executable mapping not found");
        let rate_addr = bin
            .runtime_addr(self.link_rate, exe_maps)
            .ok_or_else(mapped)?;
        let mbuckets = bin
            .runtime_addr(self.link_mbuckets, exe_maps)
            .ok_or_else(mapped)?;
        self.addrs = Some((rate_addr, mbuckets));
        self.ensure_rate(mem)?;
        self.since = match (from_exec, self.replaced.is_some()) {
            (true, _) => SampledSince::Exec,
            (false, true) => SampledSince::Attach,
            (false, false) => SampledSince::Start,
        };
        self.start = Some(if from_exec {
            Vec::new()
        } else {
            self.snapshot(mem)?
        });
        Ok(())
    }

    /// Sets the rate when the target's is 0 (its runtime may also reset it
    /// during start-up, so this runs every tick while memtrace owns it).
    fn ensure_rate(&mut self, mem: &dyn RemoteMemory) -> std::io::Result<()> {
        let Some((rate_addr, _)) = self.addrs else {
            return Ok(());
        };
        let current = mem.read_u64(rate_addr)?;
        if current == 0 && self.want_rate > 0 {
            mem.write_u64(rate_addr, self.want_rate)?;
            if self.replaced.is_none() {
                self.reporter.progress(&format!(
                    "pid {}: set runtime.MemProfileRate from 0 to {} for the alloc/heap lenses; it is restored when memtrace stops",
                    self.pid, self.want_rate
                ));
                self.replaced = Some(0);
            }
            self.rate = self.want_rate;
        } else if self.replaced.is_none() {
            self.rate = current;
        }
        Ok(())
    }

    /// Keeps the rate and refreshes the latest snapshot.
    pub fn tick(&mut self, mem: &dyn RemoteMemory) {
        if self.addrs.is_none() {
            return;
        }
        if self.replaced.is_some() {
            let _ = self.ensure_rate(mem);
        }
        if let Ok(b) = self.snapshot(mem) {
            self.last = Some(b);
        }
    }

    /// Takes the final snapshot (when the target can still be read) and
    /// writes the original rate back.
    pub fn finish(&mut self, mem: Option<&dyn RemoteMemory>, alive: bool) {
        let Some(mem) = mem else {
            return;
        };
        self.tick(mem);
        if let Some((rate_addr, orig)) = self.restore_point() {
            match mem.write_u64(rate_addr, orig) {
                Ok(()) => {
                    log::info!(
                        "pid {}: runtime.MemProfileRate restored to {orig}",
                        self.pid
                    );
                    self.replaced = None;
                }
                Err(e) if alive => self.reporter.warn(&format!(
                    "pid {}: could not restore runtime.MemProfileRate to {orig}: {e}",
                    self.pid
                )),
                Err(_) => {}
            }
        }
    }

    /// Estimated bytes allocated between the first and the latest snapshot.
    pub fn allocated(&self) -> Option<u64> {
        let (start, end) = (self.start.as_ref()?, self.last.as_ref()?);
        Some(
            memprof::alloc_delta(start, end, self.rate)
                .iter()
                .map(|(_, b, _)| b)
                .sum(),
        )
    }

    /// The alloc and heap cells of this target, stacks interned in `stacks`.
    pub fn cells(&self, stacks: &mut StackTable) -> Option<[(Lens, HashMap<StackKey, Cell>); 2]> {
        let (start, end) = (self.start.as_ref()?, self.last.as_ref()?);
        let by_lens = [
            (Lens::Alloc, memprof::alloc_delta(start, end, self.rate)),
            (Lens::Heap, memprof::inuse(end, self.rate)),
        ];
        Some(by_lens.map(|(lens, rows)| {
            let mut cells: HashMap<StackKey, Cell> = HashMap::new();
            for (stack, bytes, objects) in rows {
                // Bucket stacks hold return addresses: make the first one
                // point into the call, like a pc.
                let mut frames = stack.to_vec();
                if let Some(f) = frames.first_mut() {
                    *f = f.saturating_sub(1);
                }
                let c = cells
                    .entry((self.pid, stacks.intern(self.pid, frames)))
                    .or_default();
                c.bytes += bytes;
                c.objects += objects;
            }
            (lens, cells)
        }))
    }
}

/// The alloc or heap lens: its cells come from each target's
/// [`RuntimeProfile`], which the engine reads.
pub struct Sampled(pub Lens);

impl Instance for Sampled {
    fn lens(&self) -> Lens {
        self.0
    }

    fn cells(&self, _: &[u32], _: bool, _: &mut StackTable) -> Option<HashMap<StackKey, Cell>> {
        None
    }

    /// The sampling rate and since when; for heap, how much of the Go
    /// heap's live bytes the profile accounts for, and a caveat when
    /// sampling began at attach.
    fn extras(&self, p: &Profile, w: &mut dyn Window) -> Option<LensExtras> {
        let (rate, since) = w.sampling();
        if self.0 == Lens::Alloc {
            return Some(LensExtras::Sampled(extras(rate, since, None)));
        }
        let (total, live) = (p.total(), w.heap_live());
        if since == SampledSince::Attach {
            w.warn(heap_note(total, live));
        }
        Some(LensExtras::Sampled(extras(
            rate,
            since,
            Some((total, live)),
        )))
    }
}

/// The heap lens's caveat when sampling began at attach.
fn heap_note(total: u64, live: u64) -> String {
    let coverage = if live > 0 {
        format!(
            "; it accounts for {:.0}% of the Go heap's {} live bytes",
            total as f64 / live as f64 * 100.0,
            human_bytes(live)
        )
    } else {
        String::new()
    };
    format!("heap lens: the program had memory profiling off, so sampling began when memtrace attached and objects allocated before are not attributed{coverage}")
}

/// The lenses' extras in `summary.json`. For `heap` with `heap_live`
/// (the Go heap's live bytes at the end, from the GC controller): how much
/// of it the lens accounts for.
fn extras(rate: u64, since: SampledSince, heap: Option<(u64, u64)>) -> SampledExtras {
    let heap = heap.filter(|(_, live)| *live > 0);
    SampledExtras {
        sample_rate_bytes: rate,
        sampled_since: since,
        heap_live_bytes: heap.map(|(_, live)| live),
        heap_live_coverage: heap
            .map(|(total, live)| (total as f64 / live as f64 * 1000.0).round() / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::remote::FakeMemory;

    #[test]
    fn writes_the_rate_when_off_and_restores_it() {
        let mem = FakeMemory::default();
        // MemProfileRate at 0x1000 (0: off), mbuckets at 0x2000 (empty list).
        mem.map_words(0x1000, &[0]);
        mem.map_words(0x2000, &[0]);
        let said = Arc::new(crate::model::reporter::Collect::default());
        let mut p = RuntimeProfile {
            pid: 1,
            link_rate: 0x1000,
            link_mbuckets: 0x2000,
            cycle_words: 4,
            want_rate: 4096,
            addrs: None,
            replaced: None,
            rate: 0,
            start: None,
            last: None,
            since: SampledSince::Start,
            reporter: said.clone(),
        };
        p.addrs = Some((0x1000, 0x2000));
        p.ensure_rate(&mem).unwrap();
        assert_eq!(mem.read_u64(0x1000).unwrap(), 4096);
        assert_eq!(p.restore_point(), Some((0x1000, 0)));
        let told = said.messages();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(
            told[0]
                .1
                .contains("set runtime.MemProfileRate from 0 to 4096"),
            "the write is announced: {told:?}"
        );
        // The runtime resets it during start-up: written again.
        mem.write_u64(0x1000, 0).unwrap();
        p.tick(&mem);
        assert_eq!(mem.read_u64(0x1000).unwrap(), 4096);
        assert_eq!(p.last, Some(vec![]));
        p.finish(Some(&mem), true);
        assert_eq!(mem.read_u64(0x1000).unwrap(), 0, "restored");
        assert_eq!(p.restore_point(), None);
        // A rate the program set itself is used as it is, never replaced.
        mem.write_u64(0x1000, 512 * 1024).unwrap();
        let mut own = RuntimeProfile {
            addrs: Some((0x1000, 0x2000)),
            ..p
        };
        own.ensure_rate(&mem).unwrap();
        assert_eq!((own.rate, own.restore_point()), (512 * 1024, None));
    }
}
