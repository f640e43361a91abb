//! Where a process's resident memory sits: Go heap arenas, goroutine stacks,
//! other anonymous memory (syscall.Mmap, cgo, runtime metadata), file-backed
//! pages and the rest. Answers "RSS is much larger than heap_inuse: where is
//! it?". Parsing is pure; reading the target's memory is a small edge.

use crate::model::target::Breakdown;

use crate::host::remote::RemoteMemory;

/// Go reserves heap arenas in 64 MiB-aligned units (`heapArenaBytes` on
/// 64-bit Linux), at hint addresses that newer versions randomize.
const ARENA: u64 = 64 << 20;

struct Mapping {
    start: u64,
    end: u64,
    anon_private: bool,
    kind: Kind,
    rss: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anon,
    File,
    Other,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(first) = it.next() else { continue };
        if let Some((s, e)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // Mapping header: "start-end perms offset dev inode [path]".
            let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
            else {
                continue;
            };
            let perms = it.next().unwrap_or("");
            let path = it.skip(3).collect::<Vec<_>>().join(" ");
            let shared = perms.contains('s');
            let kind = if path.is_empty() || path == "[heap]" {
                if shared {
                    Kind::Other
                } else {
                    Kind::Anon
                }
            } else if path.starts_with('/')
                && !["/memfd:", "/SYSV", "/dev/shm"]
                    .iter()
                    .any(|p| path.starts_with(p))
            {
                Kind::File
            } else {
                Kind::Other
            };
            out.push(Mapping {
                start,
                end,
                anon_private: path.is_empty() && !shared,
                kind,
                rss: 0,
            });
        } else if first == "Rss:" {
            if let Some(m) = out.last_mut() {
                m.rss = it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 1024;
            }
        }
    }
    out
}

/// Marks the mappings that form Go heap arenas: runs of adjacent anonymous
/// private mappings (reserved and committed parts alike) that begin and end
/// on 64 MiB boundaries. Other anonymous runs placed by the kernel are not
/// aligned like that.
fn arena_flags(maps: &[Mapping]) -> Vec<bool> {
    let mut flags = vec![false; maps.len()];
    let mut i = 0;
    while i < maps.len() {
        if !maps[i].anon_private {
            i += 1;
            continue;
        }
        let mut j = i;
        while j + 1 < maps.len() && maps[j + 1].anon_private && maps[j + 1].start == maps[j].end {
            j += 1;
        }
        if maps[i].start.is_multiple_of(ARENA) && maps[j].end.is_multiple_of(ARENA) {
            flags[i..=j].iter_mut().for_each(|f| *f = true);
        }
        i = j + 1;
    }
    flags
}

/// Classifies `/proc/PID/smaps`; goroutine stack bytes (if known) are moved
/// out of the heap figure.
pub fn from_smaps(text: &str, goroutine_stacks: u64) -> Breakdown {
    let maps = parse_smaps(text);
    let arenas = arena_flags(&maps);
    let mut b = Breakdown::default();
    for (m, arena) in maps.iter().zip(arenas) {
        match (m.kind, arena) {
            (_, true) => b.go_heap += m.rss,
            (Kind::Anon, false) => b.off_heap_anon += m.rss,
            (Kind::File, _) => b.file_backed += m.rss,
            (Kind::Other, _) => b.other += m.rss,
        }
    }
    let stacks = goroutine_stacks.min(b.go_heap);
    b.go_heap -= stacks;
    b.goroutine_stacks = stacks;
    b
}

/// Sums `hi - lo` over the stacks of every goroutine in `runtime.allgs`,
/// read from the target's memory. `allgs` is the runtime address of that
/// slice header; every `runtime.g` starts with `stack{lo, hi}`.
pub fn goroutine_stack_bytes(mem: &dyn RemoteMemory, allgs: u64) -> std::io::Result<u64> {
    let (ptr, len) = (mem.read_u64(allgs)?, mem.read_u64(allgs + 8)?);
    let len = len.min(10_000_000) as usize;
    let mut total = 0u64;
    for g in mem.read_words(ptr, len)?.into_iter().filter(|g| *g != 0) {
        if let Some(b) = stack_size(mem, g) {
            total += b;
        }
    }
    Ok(total)
}

/// `hi - lo` of one goroutine's stack (`runtime.g` starts with `stack{lo, hi}`).
pub fn stack_size(mem: &dyn RemoteMemory, g: u64) -> Option<u64> {
    let w = mem.read_words(g, 2).ok()?;
    let (lo, hi) = (w[0], w[1]);
    (lo != 0 && hi > lo && hi - lo <= 1 << 30).then_some(hi - lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_smaps() {
        let text = "\
00400000-00480000 r-xp 00000000 fe:01 1234 /app
Size:                512 kB
Rss:                 400 kB
2e0fe0000000-2e0fe0c00000 ---p 00000000 00:00 0 
Rss:                   0 kB
2e0fe0c00000-2e0fe3000000 rw-p 00000000 00:00 0 
Rss:               10240 kB
2e0fe3000000-2e0fe4000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0000100000-7f0000900000 rw-p 00000000 00:00 0 
Rss:                8192 kB
7f0000900000-7f0004000000 rw-p 00000000 00:00 0 
Rss:                   0 kB
01000000-01100000 rw-p 00000000 00:00 0 [heap]
Rss:                 100 kB
7ffd0000-7ffd2000 rw-p 00000000 00:00 0 [stack]
Rss:                   8 kB
7e0000000000-7e0000001000 rw-s 00000000 00:01 9 /memfd:x (deleted)
Rss:                   4 kB
VmFlags: rd wr mr mw me ac sd
";
        let b = from_smaps(text, 1024 * 1024);
        assert_eq!(b.file_backed, 400 * 1024);
        assert_eq!(b.goroutine_stacks, 1024 * 1024);
        assert_eq!(b.go_heap, 9216 * 1024);
        assert_eq!(b.off_heap_anon, (8192 + 100) * 1024);
        assert_eq!(b.other, 12 * 1024);
        assert_eq!(b.total(), (400 + 10240 + 8192 + 100 + 12) * 1024);
    }

    #[test]
    fn sums_goroutine_stacks_from_allgs() {
        // allgs: a slice of three "g" pointers, each starting with {lo, hi}.
        let mem = crate::host::remote::FakeMemory::default();
        mem.map_words(0x100, &[0x200, 3, 3]);
        mem.map_words(0x200, &[0x1000, 0, 0x2000]);
        mem.map_words(0x1000, &[0x7000, 0x9000]);
        mem.map_words(0x2000, &[0, 0]); // no stack
        assert_eq!(goroutine_stack_bytes(&mem, 0x100).unwrap(), 0x2000);
        assert_eq!(stack_size(&mem, 0x1000), Some(0x2000));
    }
}
