//! The lenses a user can ask for, and which of them this build implements.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lens {
    Rss,
    Mmap,
    Alloc,
    AllocExact,
    Heap,
    Goroutines,
}

impl Lens {
    pub const ALL: [Lens; 6] = [
        Lens::Rss,
        Lens::Mmap,
        Lens::Alloc,
        Lens::AllocExact,
        Lens::Heap,
        Lens::Goroutines,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lens::Rss => "rss",
            Lens::Mmap => "mmap",
            Lens::Alloc => "alloc",
            Lens::AllocExact => "alloc-exact",
            Lens::Heap => "heap",
            Lens::Goroutines => "goroutines",
        }
    }

    /// Tracepoints the lens needs: `(program, category, event)`.
    pub fn tracepoints(self) -> &'static [(&'static str, &'static str, &'static str)] {
        const MMAP: &[(&str, &str, &str)] = &[
            ("mmap_enter", "syscalls", "sys_enter_mmap"),
            ("mmap_exit", "syscalls", "sys_exit_mmap"),
            ("munmap_enter", "syscalls", "sys_enter_munmap"),
        ];
        const RSS: &[(&str, &str, &str)] = &[
            ("fault_user", "exceptions", "page_fault_user"),
            ("fault_kernel", "exceptions", "page_fault_kernel"),
            ("mmap_enter", "syscalls", "sys_enter_mmap"),
            ("mmap_exit", "syscalls", "sys_exit_mmap"),
            ("munmap_enter", "syscalls", "sys_enter_munmap"),
            ("madvise_enter", "syscalls", "sys_enter_madvise"),
            ("mremap_enter", "syscalls", "sys_enter_mremap"),
            ("mremap_exit", "syscalls", "sys_exit_mremap"),
            ("brk_enter", "syscalls", "sys_enter_brk"),
            ("brk_exit", "syscalls", "sys_exit_brk"),
        ];
        match self {
            Lens::Mmap => MMAP,
            Lens::Rss => RSS,
            _ => &[],
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Lens::Goroutines => "goroutines",
            _ => "bytes",
        }
    }
}

impl fmt::Display for Lens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown or not-yet-available lens name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LensError {
    #[error("unknown lens `{0}`: choose from rss, mmap, alloc, alloc-exact, heap, goroutines")]
    Unknown(String),
}

impl FromStr for Lens {
    type Err = LensError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lens = Lens::ALL
            .into_iter()
            .find(|l| l.name() == s.trim())
            .ok_or_else(|| LensError::Unknown(s.to_string()))?;
        Ok(lens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert_eq!("alloc-exact".parse::<Lens>(), Ok(Lens::AllocExact));
        assert_eq!("mmap".parse::<Lens>(), Ok(Lens::Mmap));
        assert_eq!("rss".parse::<Lens>(), Ok(Lens::Rss));
        assert_eq!("heap".parse::<Lens>(), Ok(Lens::Heap));
        assert_eq!("goroutines".parse::<Lens>(), Ok(Lens::Goroutines));
        assert!(matches!(
            "bogus".parse::<Lens>(),
            Err(LensError::Unknown(_))
        ));
    }
}
