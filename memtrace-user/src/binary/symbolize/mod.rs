//! Instruction pointers to Go function names, inlined frames included.
//!
//! Addresses are normalized against the process's mappings captured while it
//! ran (so names resolve after it exits). Go executables registered with
//! [`Symbolizer::add_go_binary`] are resolved from their `.gopclntab` (names
//! and inline trees as `go tool pprof` shows them, stripped or not, read
//! once while the process was reachable); other files (libc, cgo libraries)
//! with blazesym. Results are cached per (build ID, address), so many
//! processes of one binary, in any mount namespace, cost one lookup a frame.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blazesym::symbolize::{
    source::Elf, source::Source, CodeInfo, Input, Symbolized, Symbolizer as Blaze,
};

use crate::binary::gopclntab::GoTable;
use crate::host::procfs::MapEntry;
use crate::model::profile::Frame;

/// The frames at one address of a stack, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackLoc {
    /// The address as the stack had it (a return address, except the leaf).
    pub address: u64,
    pub frames: Vec<Frame>,
}

/// A pseudo return address at the root of the stacks of goroutines that
/// existed before tracing (only their creator's pc is known).
pub const EXISTING_GOROUTINE: u64 = u64::MAX;

/// A pseudo leaf for memory resident before tracing began (in whole-trace
/// rss views): no stack touched it while memtrace watched.
pub const RESIDENT_BEFORE: u64 = u64::MAX - 4;

/// Frame shown for a stack the kernel could not capture.
pub const STACK_UNAVAILABLE: &str = "[stack unavailable]";

/// What is known about one process's address space.
#[derive(Clone, Debug)]
pub struct Image {
    pub exe: PathBuf,
    /// Mappings from `/proc/PID/maps`; `None` until read after exec. Without
    /// them, addresses are taken as the executable's own virtual addresses,
    /// which is right for Go's default non-PIE builds.
    pub maps: Option<Vec<MapEntry>>,
    /// `/proc/PID/root`: where files named in the maps are found when the
    /// process sees another filesystem (a container) than memtrace does.
    pub root: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Where {
    File(PathBuf, u64),
    Virt(PathBuf, u64),
    /// In an anonymous mapping (a thread stack, the vdso).
    Anon(u64),
    /// In no mapping at all: not code, so not a real return address.
    Unmapped(u64),
    /// A link-time address in Go table number `.0`.
    Go(usize, u64),
}

/// A caching symbolizer.
pub struct Symbolizer {
    blaze: Blaze,
    cache: HashMap<Where, Vec<Frame>>,
    /// Go tables, one per build ID, with a path of the file each is from.
    tables: Vec<Arc<GoTable>>,
    table_paths: Vec<PathBuf>,
    /// Path (as `/proc/PID/maps` names it) → index in `tables`.
    go_paths: HashMap<PathBuf, usize>,
    /// Frames that resolved to no name.
    pub unresolved: u64,
    /// Of those, frames in Go binaries (outside C code they link).
    pub unresolved_go: u64,
    /// Stacks cut where the frame-pointer walk left the stack (an address
    /// in no mapping, or in the Go binary but in no function).
    pub truncated: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self {
            blaze: Blaze::builder()
                .enable_inlined_fns(true)
                .enable_code_info(true)
                .build(),
            cache: HashMap::new(),
            tables: Vec::new(),
            table_paths: Vec::new(),
            go_paths: HashMap::new(),
            unresolved: 0,
            unresolved_go: 0,
            truncated: 0,
        }
    }
}

impl Symbolizer {
    /// Resolves addresses in the file at `path` (as the target's maps name
    /// it, even if that path does not exist here) with Go's own table.
    /// Binaries with one build ID share one table and one frame cache.
    pub fn add_go_binary(&mut self, path: &Path, table: Arc<GoTable>) {
        let same = self.tables.iter().position(|t| {
            Arc::ptr_eq(t, &table) || (!table.build_id.is_empty() && t.build_id == table.build_id)
        });
        let idx = same.unwrap_or_else(|| {
            self.tables.push(table);
            self.table_paths.push(strip_deleted(path));
            self.tables.len() - 1
        });
        self.go_paths.insert(strip_deleted(path), idx);
    }

    /// The frames of a kernel stack (leaf first), returned root first, one
    /// entry per address with its inlined frames expanded in call order. The
    /// frame-pointer walk does not know where a Go stack ends and may go on
    /// into junk; like Go's own unwinder, the stack ends at the function
    /// every goroutine or thread starts in, or where an address cannot be a
    /// return address.
    pub fn stack(&mut self, image: &Image, ips: &[u64]) -> Vec<StackLoc> {
        let mut out = Vec::new();
        for (i, &ip) in ips.iter().enumerate() {
            // Non-leaf entries are return addresses: look up the call itself.
            let pc = if i == 0 { ip } else { ip.saturating_sub(1) };
            if i > 0 && self.is_junk(image, pc) {
                self.truncated += 1;
                break;
            }
            let frames = self.frame(image, pc);
            let bottom = frames.first().is_some_and(|f| is_stack_bottom(&f.function));
            out.push(StackLoc {
                address: ip,
                frames,
            });
            if bottom {
                break;
            }
        }
        out.reverse();
        out
    }

    /// The names of a kernel stack, root first (see [`Symbolizer::stack`]).
    pub fn names(&mut self, image: &Image, ips: &[u64]) -> Vec<String> {
        self.stack(image, ips)
            .into_iter()
            .flat_map(|l| l.frames)
            .map(|f| f.function.to_string())
            .collect()
    }

    /// The binary `addr` is in, as pprof wants it: the mapping of the
    /// process's maps that holds it, or (maps unknown) the executable's text
    /// segment at its link-time address.
    pub fn mapping_of(&self, image: &Image, addr: u64) -> Option<crate::model::profile::Mapping> {
        let build_id = |path: &Path| {
            self.go_paths
                .get(path)
                .map(|&i| self.tables[i].build_id.clone())
                .unwrap_or_default()
        };
        match &image.maps {
            Some(maps) => {
                let m = maps.iter().find(|m| m.contains(addr))?;
                let path = strip_deleted(m.path.as_deref()?);
                Some(crate::model::profile::Mapping {
                    start: m.start,
                    limit: m.end,
                    offset: m.offset,
                    build_id: build_id(&path),
                    file: path.to_string_lossy().into_owned(),
                })
            }
            None => {
                let exe = strip_deleted(&image.exe);
                let table = &self.tables[*self.go_paths.get(&exe)?];
                let (start, limit, offset) = table.text_segment()?;
                (start..limit)
                    .contains(&addr)
                    .then(|| crate::model::profile::Mapping {
                        start,
                        limit,
                        offset,
                        build_id: table.build_id.clone(),
                        file: exe.to_string_lossy().into_owned(),
                    })
            }
        }
    }

    /// Whether a return address cannot be one: it is in no mapping, or in
    /// one that holds no code (data, a stack). Without the process's maps
    /// nothing can be told.
    fn is_junk(&self, image: &Image, pc: u64) -> bool {
        if pc >= RESIDENT_BEFORE - 1 {
            return false;
        }
        match &image.maps {
            Some(maps) => maps
                .iter()
                .find(|m| m.contains(pc))
                .is_none_or(|m| !m.perms.contains('x')),
            None => false,
        }
    }

    /// The frames at one pc, outermost first.
    fn frame(&mut self, image: &Image, pc: u64) -> Vec<Frame> {
        if pc >= EXISTING_GOROUTINE - 1 {
            return vec![Frame::named("[created before tracing]")];
        }
        if pc >= RESIDENT_BEFORE - 1 {
            return vec![Frame::named("[resident before tracing]")];
        }
        let at = self.rekey(image, locate(image, pc));
        if let Some(hit) = self.cache.get(&at) {
            return hit.clone();
        }
        let frames = match &at {
            Where::Anon(pc) | Where::Unmapped(pc) => vec![Frame::named(&format!("[anon] {pc:#x}"))],
            Where::File(path, off) => self.lookup(path, Input::FileOffset(&[*off][..]), *off),
            Where::Virt(path, addr) => self.lookup(path, Input::VirtOffset(&[*addr][..]), *addr),
            Where::Go(idx, addr) => match self.tables[*idx].locate(*addr) {
                Some(src) => src
                    .into_iter()
                    .map(|f| Frame {
                        function: f.function.into(),
                        file: f.file.into(),
                        line: f.line,
                        start_line: f.start_line,
                        inlined: f.inlined,
                    })
                    .collect(),
                None if self.tables[*idx].covers(*addr) => {
                    self.unresolved += 1;
                    self.unresolved_go += 1;
                    vec![Frame::named(&format!("[unknown Go pc] {addr:#x}"))]
                }
                // Not Go: C code linked in (cgo's start-up, `_start`), named
                // from the file's own symbols if it has them.
                None => {
                    let path = self.table_paths[*idx].clone();
                    let path = match &image.root {
                        Some(root) if !path.exists() => {
                            root.join(path.strip_prefix("/").unwrap_or(&path))
                        }
                        _ => path,
                    };
                    self.lookup(&path, Input::VirtOffset(&[*addr][..]), *addr)
                }
            },
        };
        self.cache.insert(at, frames.clone());
        frames
    }

    /// Re-keys an address in a registered Go binary by its table, and one in
    /// a file this namespace lacks by its path under the process's root.
    fn rekey(&self, image: &Image, at: Where) -> Where {
        let found = match &at {
            Where::File(path, off) => self
                .go_paths
                .get(path)
                .and_then(|&i| Some((i, self.tables[i].vaddr_of(*off)?))),
            Where::Virt(path, addr) => self.go_paths.get(path).map(|&i| (i, *addr)),
            _ => None,
        };
        if let Some((i, vaddr)) = found {
            return Where::Go(i, vaddr);
        }
        match (at, &image.root) {
            (Where::File(path, off), Some(root)) if !path.exists() => {
                let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
                Where::File(if inside.exists() { inside } else { path }, off)
            }
            (at, _) => at,
        }
    }

    fn lookup(&mut self, path: &Path, input: Input<&[u64]>, addr: u64) -> Vec<Frame> {
        let src = Source::Elf(Elf::new(path));
        let result = self.blaze.symbolize(&src, input);
        let position = |c: Option<&CodeInfo<'_>>| match c {
            Some(c) => (
                c.to_path().to_string_lossy().into_owned(),
                c.line.unwrap_or(0),
            ),
            None => (String::new(), 0),
        };
        match result.as_deref() {
            Ok([Symbolized::Sym(sym)]) => {
                let (file, line) = position(sym.code_info.as_deref());
                let mut frames = vec![Frame {
                    function: sym.name.as_ref().into(),
                    file: file.into(),
                    line,
                    start_line: 0,
                    inlined: false,
                }];
                for f in sym.inlined.iter() {
                    let (file, line) = position(f.code_info.as_ref());
                    frames.push(Frame {
                        function: f.name.as_ref().into(),
                        file: file.into(),
                        line,
                        start_line: 0,
                        inlined: true,
                    });
                }
                frames
            }
            _ => {
                self.unresolved += 1;
                let base = path
                    .file_name()
                    .unwrap_or(path.as_os_str())
                    .to_string_lossy();
                vec![Frame::named(&format!("{base}+{addr:#x}"))]
            }
        }
    }
}

fn locate(image: &Image, pc: u64) -> Where {
    match &image.maps {
        None => Where::Virt(image.exe.clone(), pc),
        Some(maps) => match maps.iter().find(|m| m.contains(pc)) {
            Some(MapEntry {
                path: Some(path),
                start,
                offset,
                ..
            }) => Where::File(strip_deleted(path), pc - start + offset),
            Some(_) => Where::Anon(pc),
            None => Where::Unmapped(pc),
        },
    }
}

/// Functions no Go frame is below: a goroutine's (`goexit`), the main
/// thread's (`rt0_go`) and another thread's (`mstart`) first frame.
pub fn is_stack_bottom(function: &str) -> bool {
    matches!(
        function,
        "runtime.goexit" | "runtime.rt0_go" | "runtime.mstart"
    )
}

/// `/proc/PID/maps` marks unlinked files with a " (deleted)" suffix.
pub fn strip_deleted(path: &Path) -> PathBuf {
    let s = path.to_string_lossy();
    PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
}

/// Whether `frame` is one of Go's heap allocation entry points (or the
/// wrappers the compiler calls them through).
pub fn is_allocator_frame(frame: &str) -> bool {
    const EXACT: &[&str] = &[
        "runtime.newobject",
        "runtime.newarray",
        "runtime.makeslice",
        "runtime.makeslicecopy",
        "runtime.growslice",
        "runtime.makemap",
        "runtime.makemap_small",
        "runtime.makechan",
        "runtime.rawstring",
        "runtime.rawstringtmp",
        "runtime.rawbyteslice",
        "runtime.rawruneslice",
        "runtime.slicebytetostring",
        "runtime.stringtoslicebyte",
        "runtime.stringtoslicerune",
        "runtime.slicerunetostring",
        "runtime.intstring",
        "internal/runtime/maps.newarray",
    ];
    const PREFIX: &[&str] = &["runtime.mallocgc", "runtime.convT", "runtime.concatstring"];
    EXACT.contains(&frame) || PREFIX.iter().any(|p| frame.starts_with(p))
}

/// Trims the allocator's entry frames from the leaf end of an allocation
/// stack (root first), so the top of the flame graph is the code that asked
/// for memory. Only the entry chain goes: an allocation the runtime makes
/// while serving another (say, starting GC workers inside `mallocgc`) keeps
/// its runtime frames, so it is never charged to the outer caller.
pub fn hide_allocator_leaf(stack: &mut Vec<StackLoc>) {
    pop_leaf_frames(stack, 1, is_allocator_frame);
}

/// Pops frames from the leaf end of `stack` (root first) while `pred`
/// holds and more than `keep` frames remain; an address left without
/// frames goes too.
pub fn pop_leaf_frames(stack: &mut Vec<StackLoc>, keep: usize, pred: impl Fn(&str) -> bool) {
    let mut total: usize = stack.iter().map(|l| l.frames.len()).sum();
    while total > keep {
        let Some(leaf) = stack.last_mut() else { return };
        match leaf.frames.last() {
            Some(f) if pred(&f.function) => {
                leaf.frames.pop();
                total -= 1;
            }
            Some(_) => return,
            None => {}
        }
        if leaf.frames.is_empty() {
            stack.pop();
        }
    }
}

#[cfg(test)]
mod tests;
