//! The alloc and heap lenses' session with one target: find the runtime's
//! memory profile, make sure it samples during the window (writing
//! `runtime.MemProfileRate` if it is 0, announced and undone at the end), and
//! snapshot its buckets at the start and, every second, towards the end.

use std::os::unix::fs::FileExt as _;

use crate::error::TargetError;
use crate::goruntime::GoBinary;
use crate::memprof::{self, Bucket};
use crate::procfs::{self, MapEntry};

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
}

impl RuntimeProfile {
    /// Checks that the binary exposes what the lenses need.
    pub fn new(pid: u32, bin: &GoBinary, want_rate: u64) -> Result<Self, TargetError> {
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
        })
    }

    fn mem(&self) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(procfs::proc_dir(self.pid).join("mem"))
    }

    fn read_word(&self, addr: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.mem()?.read_exact_at(&mut b, addr)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write_word(&self, addr: u64, v: u64) -> std::io::Result<()> {
        self.mem()?.write_all_at(&v.to_le_bytes(), addr)
    }

    fn snapshot(&self) -> std::io::Result<Vec<Bucket>> {
        let (_, mbuckets) = self
            .addrs
            .ok_or_else(|| std::io::Error::other("profile not started"))?;
        let mem = self.mem()?;
        let read = |addr: u64, buf: &mut [u8]| mem.read_exact_at(buf, addr);
        memprof::read_buckets(&read, mbuckets, self.cycle_words)
    }

    pub fn started(&self) -> bool {
        self.addrs.is_some()
    }

    /// Starts sampling (if needed) and takes the first snapshot.
    pub fn start(&mut self, bin: &GoBinary, exe_maps: &[MapEntry]) -> std::io::Result<()> {
        let rate_addr = bin
            .runtime_addr(self.link_rate, exe_maps)
            .ok_or_else(|| std::io::Error::other("executable mapping not found"))?;
        let mbuckets = bin
            .runtime_addr(self.link_mbuckets, exe_maps)
            .ok_or_else(|| std::io::Error::other("executable mapping not found"))?;
        self.addrs = Some((rate_addr, mbuckets));
        self.ensure_rate()?;
        self.start = Some(self.snapshot()?);
        Ok(())
    }

    /// Sets the rate when the target's is 0 (its runtime may also reset it
    /// during start-up, so this runs every tick while memtrace owns it).
    fn ensure_rate(&mut self) -> std::io::Result<()> {
        let Some((rate_addr, _)) = self.addrs else {
            return Ok(());
        };
        let current = self.read_word(rate_addr)?;
        if current == 0 && self.want_rate > 0 {
            self.write_word(rate_addr, self.want_rate)?;
            if self.replaced.is_none() {
                eprintln!(
                    "memtrace: pid {}: set runtime.MemProfileRate from 0 to {} for the alloc/heap lenses; it is restored when memtrace stops",
                    self.pid, self.want_rate
                );
                self.replaced = Some(0);
            }
            self.rate = self.want_rate;
        } else if self.replaced.is_none() {
            self.rate = current;
        }
        Ok(())
    }

    /// Keeps the rate and refreshes the latest snapshot.
    pub fn tick(&mut self) {
        if self.addrs.is_none() {
            return;
        }
        if self.replaced.is_some() {
            let _ = self.ensure_rate();
        }
        if let Ok(b) = self.snapshot() {
            self.last = Some(b);
        }
    }

    /// Final snapshot (if the target lives) and restores the original rate.
    pub fn finish(&mut self) {
        self.tick();
        if let (Some(orig), Some((rate_addr, _))) = (self.replaced, self.addrs) {
            match self.write_word(rate_addr, orig) {
                Ok(()) => log::info!("pid {}: runtime.MemProfileRate restored to {orig}", self.pid),
                Err(e) if procfs::is_alive(self.pid) => eprintln!(
                    "memtrace: warning: pid {}: could not restore runtime.MemProfileRate to {orig}: {e}",
                    self.pid
                ),
                Err(_) => {}
            }
        }
    }
}
