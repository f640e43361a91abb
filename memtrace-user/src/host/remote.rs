//! The one way memtrace reads (and, for `MemProfileRate`, writes) another
//! process's memory: [`ProcessMemory`] over `/proc/PID/mem`, behind the
//! [`RemoteMemory`] trait so the readers of runtime structures (memory
//! profile buckets, `allgs`, goroutine stacks) are unit-tested against
//! [`FakeMemory`].

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;

/// Reads and writes a target's memory at its virtual addresses.
pub trait RemoteMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()>;

    fn write(&self, addr: u64, data: &[u8]) -> std::io::Result<()>;

    fn read_u64(&self, addr: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// `n` consecutive words from `addr`.
    fn read_words(&self, addr: u64, n: usize) -> std::io::Result<Vec<u64>> {
        let mut b = vec![0u8; n * 8];
        self.read(addr, &mut b)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    fn write_u64(&self, addr: u64, v: u64) -> std::io::Result<()> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// A live process's memory through `/proc/PID/mem` (needs ptrace access).
pub struct ProcessMemory {
    file: std::fs::File,
}

impl ProcessMemory {
    /// Opens `pid`'s memory for reading, and for writing where allowed.
    pub fn open(pid: u32) -> std::io::Result<Self> {
        let path = crate::host::procfs::proc_dir(pid).join("mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| std::fs::File::open(&path))?;
        Ok(Self { file })
    }
}

impl RemoteMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    fn write(&self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, addr)
    }
}

/// Memory made of a few regions, for tests of the readers.
#[derive(Clone, Debug, Default)]
pub struct FakeMemory {
    regions: std::cell::RefCell<BTreeMap<u64, Vec<u8>>>,
}

impl FakeMemory {
    /// Places `bytes` at `addr`.
    pub fn map(&self, addr: u64, bytes: Vec<u8>) {
        self.regions.borrow_mut().insert(addr, bytes);
    }

    /// Places little-endian `words` at `addr`.
    pub fn map_words(&self, addr: u64, words: &[u64]) {
        self.map(addr, words.iter().flat_map(|w| w.to_le_bytes()).collect());
    }

    fn with_region<R>(
        &self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> std::io::Result<R> {
        let mut regions = self.regions.borrow_mut();
        let (base, bytes) = regions
            .range_mut(..=addr)
            .next_back()
            .ok_or_else(|| std::io::Error::other("unmapped"))?;
        let off = (addr - base) as usize;
        let slice = bytes
            .get_mut(off..off + len)
            .ok_or_else(|| std::io::Error::other("unmapped"))?;
        Ok(f(slice))
    }
}

impl RemoteMemory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.with_region(addr, buf.len(), |s| buf.copy_from_slice(s))
    }

    fn write(&self, addr: u64, data: &[u8]) -> std::io::Result<()> {
        self.with_region(addr, data.len(), |s| s.copy_from_slice(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_this_process() {
        let cell = std::hint::black_box([7u64, 9]);
        let mem = ProcessMemory::open(std::process::id()).unwrap();
        let addr = cell.as_ptr() as u64;
        assert_eq!(mem.read_words(addr, 2).unwrap(), vec![7, 9]);
        let fake = FakeMemory::default();
        fake.map_words(0x1000, &[1, 2, 3]);
        assert_eq!(fake.read_u64(0x1008).unwrap(), 2);
        fake.write_u64(0x1010, 5).unwrap();
        assert_eq!(fake.read_words(0x1000, 3).unwrap(), vec![1, 2, 5]);
        assert!(fake.read_u64(0x1014).is_err(), "past the region");
        assert!(fake.read_u64(0x10).is_err(), "before every region");
    }
}
