//! An executable's bytes, memory-mapped rather than read: a node's agent
//! meets tens of Go binaries of 50 MB and more, and holding each whole
//! would take its memory limit. Parsing touches the pages it needs;
//! [`FileBytes::release`] gives them back (they stay in the page cache and
//! are read again on the next lookup), so what the agent keeps resident is
//! what its lookups use now, not every file it ever parsed.
//!
//! A mapping of a file that shrinks under it faults (SIGBUS) where it is
//! read past the new end. memtrace maps executables that a process runs,
//! which the kernel keeps from being written while they run; a file given
//! by path (`doctor`) is the user's own.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// The bytes of a file: a read-only private mapping, or bytes in memory
/// (tests, the fuzzer, empty files). Clones share the bytes.
#[derive(Clone)]
pub struct FileBytes(Arc<Inner>);

enum Inner {
    Mapped(memmap2::Mmap),
    Owned(Box<[u8]>),
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
        Ok(Self(Arc::new(Inner::Mapped(map))))
    }

    /// Drops the pages read so far from this process's resident memory.
    /// The bytes stay readable: the next read faults them in again.
    pub fn release(&self) {
        if let Inner::Mapped(m) = &*self.0 {
            // SAFETY: the mapping is private, read-only and never written,
            // so dropping its pages loses nothing: they are read again from
            // the file.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// Whether the bytes are a mapping of a file.
    pub fn is_mapped(&self) -> bool {
        matches!(*self.0, Inner::Mapped(_))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.0 {
            Inner::Mapped(m) => m,
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
    fn an_empty_file_is_empty_bytes() {
        let dir = std::env::temp_dir().join(format!("memtrace-empty-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let b = FileBytes::open(&dir).unwrap();
        assert!(b.is_empty() && !b.is_mapped());
        std::fs::remove_file(&dir).unwrap();
    }
}
