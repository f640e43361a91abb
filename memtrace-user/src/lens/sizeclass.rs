//! The bytes the Go runtime accounts for an allocation, as `TotalAlloc`,
//! pprof's `alloc_space` and the gate count them: a small object takes
//! its size class (2090 B takes 2304 B), a pointerful one over 512 bytes
//! first gains an 8-byte malloc header (Go 1.22+), and a large one takes
//! whole 8 KiB pages. Tiny allocations (pointer-free, under 16 bytes)
//! share 16-byte blocks, which the runtime counts per block; each is
//! charged its requested size here.

use memtrace_common::AllocType;

/// `runtime.class_to_size` (Go 1.19–1.27; the end-to-end tests hold it
/// against each toolchain's binary).
pub const CLASS_TO_SIZE: [u16; 68] = [
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 320,
    352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
    2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728,
    10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672,
    32768,
];

const MAX_SMALL: u64 = 32768;
const TINY: u64 = 16;
const PAGE: u64 = 8192;
const HEADER: u64 = 8;
/// Pointerful objects up to this size keep their pointer bitmap in the
/// span; larger ones get a malloc header (Go 1.22+).
const HEAP_BITS_IN_SPAN: u64 = 512;

/// How a Go release places objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// Go 1.22+: malloc headers.
    pub headers: bool,
}

impl Rules {
    /// For a Go version string (`go1.22.3`); unknown versions get the
    /// newest rules.
    pub fn for_version(go_version: &str) -> Self {
        let minor = crate::binary::goruntime::go_release(go_version).map_or(u32::MAX, |(_, m)| m);
        Self {
            headers: minor >= 22,
        }
    }

    /// The bytes the runtime accounts for a request of `size` bytes.
    pub fn allocated(self, size: u64, class: AllocType) -> u64 {
        let scan = class == AllocType::Scan;
        let max_small = if self.headers {
            MAX_SMALL - HEADER
        } else {
            MAX_SMALL
        };
        if size > max_small {
            return size.div_ceil(PAGE) * PAGE;
        }
        if class == AllocType::NoScan && size < TINY {
            return size;
        }
        let with_header = if self.headers && scan && size > HEAP_BITS_IN_SPAN {
            size + HEADER
        } else {
            size
        };
        // The smallest class that holds it (the runtime's size_to_class
        // tables say the same).
        let i = CLASS_TO_SIZE.partition_point(|&c| u64::from(c) < with_header);
        CLASS_TO_SIZE.get(i).map_or(with_header, |&c| u64::from(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_as_the_runtime_accounts_them() {
        let (old, new) = (Rules { headers: false }, Rules { headers: true });
        let (s, n) = (AllocType::Scan, AllocType::NoScan);
        // The gate's example: 2090 B takes the 2304 B class.
        assert_eq!(old.allocated(2090, s), 2304);
        assert_eq!(new.allocated(2090, n), 2304);
        assert_eq!(old.allocated(64, s), 64);
        assert_eq!(old.allocated(65, n), 80);
        // Malloc headers: pointerful objects over 512 bytes, Go 1.22+.
        assert_eq!(new.allocated(512, s), 512);
        assert_eq!(new.allocated(513, s), 576);
        assert_eq!(new.allocated(1024, s), 1152);
        assert_eq!(new.allocated(1024, n), 1024);
        assert_eq!(old.allocated(1024, s), 1024);
        // Tiny: pointer-free and under 16 bytes, charged as requested.
        assert_eq!(old.allocated(5, n), 5);
        assert_eq!(old.allocated(5, s), 8);
        assert_eq!(new.allocated(16, n), 16);
        // Large objects take whole pages (with headers, from 32761 bytes).
        assert_eq!(old.allocated(32761, n), 32768);
        assert_eq!(new.allocated(32761, n), 32768);
        assert_eq!(new.allocated(40000, s), 40960);
        assert_eq!(new.allocated(32760, s), 32768);
        assert_eq!(old.allocated(100_000, s), 106_496);
        assert_eq!(Rules::for_version("go1.21.13"), Rules { headers: false });
        assert_eq!(Rules::for_version("go1.22.10"), Rules { headers: true });
        assert_eq!(Rules::for_version("unknown"), Rules { headers: true });
    }

    #[test]
    fn the_class_table_increases() {
        assert!(CLASS_TO_SIZE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(CLASS_TO_SIZE[CLASS_TO_SIZE.len() - 1] as u64, MAX_SMALL);
    }
}
