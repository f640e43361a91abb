//! Facts about a Go binary that probing needs: is it Go, which version, where
//! its allocation entry points are, and where to attach inside each of them.
//! Pure: it reads an ELF image from bytes and never touches the kernel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iced_x86::{Code, Decoder, DecoderOptions, Register};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::error::TargetError;
use crate::gopclntab::{Function, GoTable, PclnError};

/// Where to put one allocation uprobe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub symbol: String,
    /// Virtual address of the attach instruction (after the prologue).
    pub vaddr: u64,
    /// Offset of that instruction in the file, as the kernel wants it.
    pub file_offset: u64,
    /// Passed as the BPF attach cookie: sizes below it are skipped.
    pub size_floor: u64,
}

/// A parsed Go executable.
#[derive(Clone, Debug)]
pub struct GoBinary {
    pub path: PathBuf,
    /// e.g. `go1.21.13`, or `unknown` when the build info is unreadable.
    pub go_version: String,
    /// The main module's path from the build info, when recorded.
    pub module: Option<String>,
    /// Go's function table: probe addresses and frame names.
    pub table: Arc<GoTable>,
    /// Built with `-ldflags=-s`: no `.symtab`, so no data symbols.
    pub stripped: bool,
    pub alloc_points: Vec<ProbePoint>,
    /// Probe points of the GC view, or why there are none.
    pub gc: Result<GcPoints, String>,
    /// `runtime.g` field offsets, from DWARF (absent when stripped).
    pub g_layout: Option<crate::gtypes::GLayout>,
    /// Probe points of the goroutines lens, or why there are none.
    pub goroutines: Result<GoroutinePoints, String>,
    /// Link-time address of `runtime.allgs` (for goroutine stack sizes).
    pub allgs: Option<u64>,
    /// Link-time addresses of `runtime.MemProfileRate` and
    /// `runtime.mbuckets` (the alloc and heap lenses).
    pub mem_profile_rate: Option<u64>,
    pub mbuckets: Option<u64>,
    /// Whether the binary is position independent (ET_DYN).
    pub pie: bool,
    /// Lowest PT_LOAD virtual address, page aligned (for PIE load bias).
    pub first_load: u64,
}

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
const MALLOCGC: &str = "runtime.mallocgc";
/// The oldest Go release memtrace is tested with.
pub const OLDEST_GO: (u32, u32) = (1, 19);
/// The newest Go release memtrace is tested with.
pub const NEWEST_GO: (u32, u32) = (1, 27);
/// `len(runtime.mallocNoScanTable)` in Go 1.27, for stripped binaries.
const GO127_NOSCAN_TABLE_LEN: u64 = 81;

impl GoBinary {
    /// Reads and analyses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let data = std::fs::read(path).map_err(|e| TargetError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(path, data.into())
    }

    pub fn parse(path: &Path, data: Arc<[u8]>) -> Result<Self, TargetError> {
        let not_go = || TargetError::NotGo(path.to_owned());
        let file = object::File::parse(&*data).map_err(|_| not_go())?;
        let is_go = [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
            .iter()
            .any(|s| file.section_by_name(s).is_some());
        if !is_go {
            return Err(not_go());
        }
        let info = file
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.data().ok())
            .and_then(parse_buildinfo);
        let (go_version, module) = match info {
            Some(i) => (i.version, i.module),
            None => ("unknown".to_string(), None),
        };
        if let Some((major, minor)) = go_release(&go_version) {
            if (major, minor) < OLDEST_GO {
                return Err(TargetError::GoVersion {
                    path: path.to_owned(),
                    version: go_version,
                });
            }
        }
        let table = GoTable::parse(data.clone()).map_err(|e| match e {
            PclnError::Missing => not_go(),
            PclnError::Unsupported(_) => TargetError::GoVersion {
                path: path.to_owned(),
                version: go_version.clone(),
            },
            other => TargetError::Read {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
        let syms = DataSymbols::new(&file);
        let bin = Binary {
            path,
            table: &table,
        };
        let alloc_points = bin.alloc_points(&syms)?;
        let first_load = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        Ok(Self {
            path: path.to_owned(),
            go_version,
            module,
            stripped: syms.stripped,
            alloc_points,
            goroutines: bin.goroutine_points().map_err(|e| e.to_string()),
            g_layout: crate::gtypes::g_layout(&data),
            gc: bin.gc_points(&syms, &data).map_err(|e| e.to_string()),
            allgs: syms.address("runtime.allgs"),
            mem_profile_rate: syms.address("runtime.MemProfileRate"),
            mbuckets: syms.address("runtime.mbuckets"),
            pie: file.kind() == object::ObjectKind::Dynamic,
            first_load,
            table: Arc::new(table),
        })
    }

    /// Translates a link-time address to the running process's, given the
    /// executable's mappings (PIE binaries load at a random base).
    pub fn runtime_addr(&self, vaddr: u64, exe_maps: &[crate::procfs::MapEntry]) -> Option<u64> {
        if !self.pie {
            return Some(vaddr);
        }
        let base = exe_maps
            .iter()
            .filter(|m| m.offset == 0)
            .map(|m| m.start)
            .min()?;
        Some(vaddr - self.first_load + base)
    }

    /// The error for a feature that needs a data symbol this binary lacks.
    pub fn missing(&self, symbol: &str, needed_by: &str) -> TargetError {
        if self.stripped {
            TargetError::Stripped {
                path: self.path.clone(),
                symbol: symbol.to_string(),
                needed_by: needed_by.to_string(),
            }
        } else {
            TargetError::MissingSymbol {
                path: self.path.clone(),
                symbol: symbol.to_string(),
            }
        }
    }
}

/// `(major, minor)` of a `go1.N[.P]` version string.
pub fn go_release(version: &str) -> Option<(u32, u32)> {
    let rest = version.strip_prefix("go")?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// Addresses of data symbols, which only `.symtab` has.
struct DataSymbols<'d, 'f> {
    file: &'f object::File<'d>,
    stripped: bool,
}

impl<'d, 'f> DataSymbols<'d, 'f> {
    fn new(file: &'f object::File<'d>) -> Self {
        Self {
            file,
            stripped: file.symbols().next().is_none(),
        }
    }

    fn get(&self, name: &str) -> Option<object::Symbol<'d, 'f>> {
        self.file.symbol_by_name(name)
    }

    fn address(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.address())
    }
}

/// Go's allocation entry points in this binary: `runtime.mallocgc` and, from
/// Go 1.27 on, the size-specialized `runtime.mallocgc{Tiny,SmallNoScan,
/// SmallScanNoHeader}SC<n>` that the compiler calls directly.
pub fn is_specialized_allocator(name: &str) -> bool {
    [
        "runtime.mallocgcTinySC",
        "runtime.mallocgcSmallNoScanSC",
        "runtime.mallocgcSmallScanNoHeaderSC",
    ]
    .iter()
    .any(|p| {
        name.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Probe placement in one binary, from its function table.
struct Binary<'a> {
    path: &'a Path,
    table: &'a GoTable,
}

impl Binary<'_> {
    fn function(&self, name: &str) -> Result<Function<'_>, TargetError> {
        self.table
            .function(name)
            .ok_or_else(|| TargetError::MissingSymbol {
                path: self.path.to_owned(),
                symbol: name.to_string(),
            })
    }

    fn alloc_points(&self, syms: &DataSymbols<'_, '_>) -> Result<Vec<ProbePoint>, TargetError> {
        let mallocgc = self.function(MALLOCGC)?;
        let specialized: Vec<Function<'_>> = self
            .table
            .functions()
            .filter(|f| is_specialized_allocator(f.name))
            .collect();
        // mallocgc forwards sizes below len(mallocNoScanTable) to the
        // specialized functions (Go ≥ 1.27); those are counted by their own
        // probes. Stripped binaries lack the table's symbol: use 1.27's size.
        let floor = match syms.get("runtime.mallocNoScanTable") {
            Some(t) => t.size() / 8,
            None if !specialized.is_empty() => GO127_NOSCAN_TABLE_LEN,
            None => 0,
        };
        std::iter::once((mallocgc, floor))
            .chain(specialized.into_iter().map(|f| (f, 0)))
            .map(|(f, size_floor)| {
                let mut p = self.after_prologue(&f)?;
                p.size_floor = size_floor;
                Ok(p)
            })
            .collect()
    }

    fn code(&self, f: &Function<'_>) -> Result<&[u8], TargetError> {
        self.table.code(f).ok_or_else(|| self.prologue_error(f))
    }

    fn prologue_error(&self, f: &Function<'_>) -> TargetError {
        TargetError::Prologue {
            path: self.path.to_owned(),
            symbol: f.name.to_string(),
        }
    }

    fn point(
        &self,
        f: &Function<'_>,
        vaddr: u64,
        symbol: String,
    ) -> Result<ProbePoint, TargetError> {
        Ok(ProbePoint {
            file_offset: self
                .table
                .file_offset(vaddr)
                .ok_or_else(|| self.prologue_error(f))?,
            vaddr,
            symbol,
            size_floor: 0,
        })
    }

    /// A probe point right after `f`'s frame setup.
    fn after_prologue(&self, f: &Function<'_>) -> Result<ProbePoint, TargetError> {
        let code = self.code(f)?;
        let skip = after_frame_setup(&code[..code.len().min(64)], f.entry)
            .ok_or_else(|| self.prologue_error(f))?;
        self.point(f, f.entry + skip, f.name.to_string())
    }

    /// Probe points on every RET instruction of `f` (to read a return value
    /// without a uretprobe, which Go's moving stacks do not survive).
    fn ret_points(&self, f: &Function<'_>) -> Result<Vec<ProbePoint>, TargetError> {
        let points = ret_offsets(self.code(f)?, f.entry)
            .into_iter()
            .map(|off| self.point(f, f.entry + off, format!("{} (ret)", f.name)))
            .collect::<Result<Vec<_>, _>>()?;
        if points.is_empty() {
            return Err(self.prologue_error(f));
        }
        Ok(points)
    }

    fn gc_points(&self, syms: &DataSymbols<'_, '_>, data: &[u8]) -> Result<GcPoints, TargetError> {
        let at = |name: &str| self.after_prologue(&self.function(name)?);
        let controller = syms.address("runtime.gcController");
        let fields = crate::gtypes::struct_members(data, "runtime.gcControllerState");
        let field = |name: &str| Some(controller? + *fields.as_ref()?.get(name)?);
        Ok(GcPoints {
            mark_termination: at("runtime.gcMarkTermination")?,
            stw_stop: at("runtime.stopTheWorldWithSema")?,
            stw_start: at("runtime.startTheWorldWithSema")?,
            heap_live: field("heapLive"),
            heap_goal: field("gcPercentHeapGoal"),
        })
    }

    fn goroutine_points(&self) -> Result<GoroutinePoints, TargetError> {
        let newproc1 = self.function("runtime.newproc1")?;
        Ok(GoroutinePoints {
            newproc: self.after_prologue(&newproc1)?,
            newproc_rets: self.ret_points(&newproc1)?,
            goexit: self.after_prologue(&self.function("runtime.goexit0")?)?,
        })
    }
}

/// Offsets of the RET instructions in a function's code.
pub fn ret_offsets(code: &[u8], ip: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.code() == Code::Retnq {
            out.push(insn.ip() - ip);
        }
    }
    out
}

/// Where the goroutines lens probes: after `runtime.newproc1`'s prologue and
/// on its RETs, and after `runtime.goexit0`'s prologue.
#[derive(Clone, Debug)]
pub struct GoroutinePoints {
    pub newproc: ProbePoint,
    pub newproc_rets: Vec<ProbePoint>,
    pub goexit: ProbePoint,
}

/// Where the GC view probes, and the link-time addresses of the heap size
/// and goal in `runtime.gcController` (from DWARF).
#[derive(Clone, Debug)]
pub struct GcPoints {
    pub mark_termination: ProbePoint,
    pub stw_stop: ProbePoint,
    pub stw_start: ProbePoint,
    pub heap_live: Option<u64>,
    pub heap_goal: Option<u64>,
}

/// Offset, from the function start, of the first instruction after Go's
/// frame setup: `PUSHQ BP; MOVQ SP, BP` (Go ≥ 1.21), or `SUBQ $n, SP;
/// MOVQ BP, n-8(SP); LEAQ n-8(SP), BP` (older). A probe there sees the caller
/// in the frame-pointer chain and fires once even when `morestack` restarts
/// the function (that re-runs the stack check, which comes before).
pub fn after_frame_setup(code: &[u8], ip: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    // The instruction before: `push rbp`, or the displacement of `mov [rsp+d], rbp`.
    let mut saved_bp: Option<Option<u64>> = None;
    for _ in 0..8 {
        if !decoder.can_decode() {
            return None;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        let done = match insn.code() {
            Code::Mov_rm64_r64 | Code::Mov_r64_rm64 => {
                saved_bp == Some(None)
                    && insn.op0_register() == Register::RBP
                    && insn.op1_register() == Register::RSP
            }
            Code::Lea_r64_m => {
                insn.op0_register() == Register::RBP
                    && insn.memory_base() == Register::RSP
                    && saved_bp == Some(Some(insn.memory_displacement64()))
            }
            _ => false,
        };
        if done {
            return Some(insn.next_ip() - ip);
        }
        saved_bp = match insn.code() {
            Code::Push_r64 if insn.op0_register() == Register::RBP => Some(None),
            Code::Mov_rm64_r64
                if insn.op0_register() == Register::None
                    && insn.memory_base() == Register::RSP
                    && insn.op1_register() == Register::RBP =>
            {
                Some(Some(insn.memory_displacement64()))
            }
            _ => None,
        };
    }
    None
}

/// What `.go.buildinfo` records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.21.13`.
    pub version: String,
    /// The main module's path (`path` line of the module info).
    pub module: Option<String>,
}

/// Reads `.go.buildinfo` (Go ≥ 1.18 inline format: a 32-byte header, then
/// varint-length-prefixed version and module-info strings).
pub fn parse_buildinfo(data: &[u8]) -> Option<BuildInfo> {
    if !data.starts_with(BUILDINFO_MAGIC) || data.len() < 32 {
        return None;
    }
    let flags = data[15];
    if flags & 0x2 == 0 {
        return None; // pre-1.18 pointer format
    }
    let mut pos = 32;
    let mut string = || -> Option<&[u8]> {
        let (len, n) = read_uvarint(data.get(pos..)?)?;
        let start = pos + n;
        pos = start.checked_add(len as usize)?;
        data.get(start..pos)
    };
    let version = String::from_utf8(string()?.to_vec()).ok()?;
    // The module info sits between two 16-byte sentinels; its lines are
    // tab-separated, the main module's import path on the `path` line.
    let module = string()
        .and_then(|info| info.get(16..info.len().checked_sub(16)?))
        .map(String::from_utf8_lossy)
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("path\t").map(str::to_string))
        });
    Some(BuildInfo { version, module })
}

fn read_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        x |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_go_frame_setup() {
        // cmp 0x10(%r14),%rsp; jbe rel32; push %rbp; mov %rsp,%rbp; sub $0x20,%rsp
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x96, 0x01, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5,
            0x48, 0x83, 0xec, 0x20,
        ];
        assert_eq!(after_frame_setup(&code, 0x4785e0), Some(14));
    }

    #[test]
    fn large_frame_prologue() {
        // lea -0x98(%rsp),%r12; cmp 0x10(%r14),%r12; jbe; push %rbp; mov %rsp,%rbp
        let code = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x00, 0x01, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5, 0x90,
        ];
        assert_eq!(after_frame_setup(&code, 0x1000), Some(22));
    }

    #[test]
    fn go_1_19_frame_setup() {
        // cmp 0x10(%r14),%rsp; jbe; sub $0x70,%rsp; mov %rbp,0x68(%rsp); lea 0x68(%rsp),%rbp
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xbe, 0x08, 0x00, 0x00, 0x48, 0x83, 0xec, 0x70,
            0x48, 0x89, 0x6c, 0x24, 0x68, 0x48, 0x8d, 0x6c, 0x24, 0x68, 0x83,
        ];
        assert_eq!(after_frame_setup(&code, 0x40bd80), Some(24));
        // A lea of another slot is not the frame setup.
        let mut other = code;
        other[23] = 0x60;
        assert_eq!(after_frame_setup(&other, 0x40bd80), None);
    }

    #[test]
    fn finds_ret_instructions() {
        // push %rbp; mov %rsp,%rbp; pop %rbp; ret; int3
        let code = [0x55, 0x48, 0x89, 0xe5, 0x5d, 0xc3, 0xcc];
        assert_eq!(ret_offsets(&code, 0x1000), vec![5]);
        assert!(ret_offsets(&[0x90, 0x90], 0).is_empty());
    }

    #[test]
    fn no_frame_setup() {
        // ret; and a push that is not followed by the frame move.
        assert_eq!(after_frame_setup(&[0xc3], 0), None);
        assert_eq!(after_frame_setup(&[0x55, 0x90, 0x48, 0x89, 0xe5], 0), None);
    }

    #[test]
    fn specialized_allocator_names() {
        assert!(is_specialized_allocator("runtime.mallocgcTinySC2"));
        assert!(is_specialized_allocator("runtime.mallocgcSmallNoScanSC17"));
        assert!(is_specialized_allocator(
            "runtime.mallocgcSmallScanNoHeaderSC1"
        ));
        assert!(!is_specialized_allocator(
            "runtime.mallocgcSmallNoScanSlowPath"
        ));
        assert!(!is_specialized_allocator("runtime.mallocgcSmallNoscan"));
        assert!(!is_specialized_allocator("runtime.mallocgcTinySC"));
        assert!(!is_specialized_allocator("main.mallocgcTinySC2"));
    }

    #[test]
    fn buildinfo_version() {
        let mut data = BUILDINFO_MAGIC.to_vec();
        data.push(8); // pointer size
        data.push(0x2); // inline strings
        data.resize(32, 0);
        data.push(9);
        data.extend_from_slice(b"go1.21.13");
        let info = b"0123456789abcdefpath\texample.com/svc\nmod\texample.com/svc\t(devel)\t\n0123456789abcdef";
        data.push(info.len() as u8);
        data.extend_from_slice(info);
        assert_eq!(
            parse_buildinfo(&data),
            Some(BuildInfo {
                version: "go1.21.13".into(),
                module: Some("example.com/svc".into())
            })
        );
        data.truncate(42);
        data.push(0);
        assert_eq!(parse_buildinfo(&data).unwrap().module, None);
        data[15] = 0;
        assert_eq!(parse_buildinfo(&data), None);
        assert_eq!(parse_buildinfo(b"nope"), None);
    }

    #[test]
    fn go_releases() {
        assert_eq!(go_release("go1.21.13"), Some((1, 21)));
        assert_eq!(go_release("go1.27rc1"), Some((1, 27)));
        assert_eq!(go_release("go1.9"), Some((1, 9)));
        assert_eq!(go_release("devel +abc"), None);
        assert!(go_release("go1.17.5").unwrap() < OLDEST_GO);
    }

    #[test]
    fn rejects_non_elf() {
        let script: &[u8] = b"#!/bin/sh\necho hi\n";
        let e = GoBinary::parse(Path::new("/x"), script.into()).unwrap_err();
        assert!(matches!(e, TargetError::NotGo(_)));
    }
}
