//! An executable's bytes, memory-mapped rather than read: a node's agent
//! meets tens of Go binaries of 50 MB and more, and holding each whole
//! would take its memory limit. Parsing touches the pages it needs;
//! [`FileBytes::release`] gives them back (they stay in the page cache and
//! are read again on the next lookup), so what the agent keeps resident is
//! what its lookups use now, not every file it ever parsed.
//!
//! A mapping of a file that shrinks under it faults (SIGBUS) where it is
//! read past the new end. The kernel keeps a running executable from being
//! written, but not once its process has exited, and the agent may still
//! symbolize it then: a tenant could truncate its own binary and kill the
//! node's agent. So every mapping is registered with [`guard`], whose
//! SIGBUS handler puts a page of zeros where the file is gone: the read
//! goes on (the parsers treat the bytes as hostile anyway) and the fault
//! is counted ([`bus_faults`]).

use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

#[path = "file_guard.rs"]
mod guard;
pub use guard::bus_faults;

/// The bytes of a file: a read-only private mapping, or bytes in memory
/// (tests, the fuzzer, empty files). Clones share the bytes.
#[derive(Clone)]
pub struct FileBytes(Arc<Inner>);

enum Inner {
    /// The mapping and its slot in the SIGBUS guard's registry.
    Mapped(memmap2::Mmap, Option<usize>),
    Owned(Box<[u8]>),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Mapped(_, Some(slot)) = self {
            guard::unregister(*slot);
        }
    }
}

impl FileBytes {
    /// Maps the file at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Self(Arc::new(Inner::Owned(Box::default()))));
        }
        // SAFETY: a private read-only mapping; see the module's note on
        // files changed while mapped.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }?;
        let slot = guard::register(map.as_ptr() as u64, map.len() as u64);
        Ok(Self(Arc::new(Inner::Mapped(map, slot))))
    }

    /// Drops the pages read so far from this process's resident memory.
    /// The bytes stay readable: the next read faults them in again.
    pub fn release(&self) {
        if let Inner::Mapped(m, _) = &*self.0 {
            // SAFETY: the mapping is private, read-only and never written,
            // so dropping its pages loses nothing: they are read again from
            // the file.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Whether the bytes are a mapping of a file.
    pub fn is_mapped(&self) -> bool {
        matches!(*self.0, Inner::Mapped(..))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Inner::Mapped(m, _) => m,
            Inner::Owned(b) => b,
        }
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(v: Vec<u8>) -> Self {
        Self(Arc::new(Inner::Owned(v.into_boxed_slice())))
    }
}

impl From<&[u8]> for FileBytes {
    fn from(v: &[u8]) -> Self {
        Self(Arc::new(Inner::Owned(v.into())))
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBytes")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_file_reads_as_its_bytes_and_stays_readable_after_release() {
        let exe = std::env::current_exe().unwrap();
        let want = std::fs::read(&exe).unwrap();
        let mapped = FileBytes::open(&exe).unwrap();
        assert!(mapped.is_mapped());
        assert_eq!(&mapped[..], &want[..]);
        mapped.release();
        assert_eq!(&mapped[..64], &want[..64]);
        assert_eq!(mapped[want.len() - 1], want[want.len() - 1]);
    }

    #[test]
    fn a_file_truncated_under_its_mapping_reads_as_zeros_not_a_crash() {
        let path = std::env::temp_dir().join(format!("memtrace-shrunk-{}", std::process::id()));
        let want: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &want).unwrap();
        let b = FileBytes::open(&path).unwrap();
        assert_eq!(b[40_000], want[40_000]);
        b.release();
        let before = bus_faults();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert_eq!(b[100], want[100], "what the file still has reads as it was");
        assert_eq!(b[40_000], 0, "past the new end: zeros");
        assert!(b[8192..].iter().all(|&x| x == 0));
        assert!(bus_faults() > before);
        drop(b);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_empty_file_is_empty_bytes() {
        let dir = std::env::temp_dir().join(format!("memtrace-empty-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let b = FileBytes::open(&dir).unwrap();
        assert!(b.is_empty() && !b.is_mapped());
        std::fs::remove_file(&dir).unwrap();
    }
}
