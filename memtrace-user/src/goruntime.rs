//! Facts about a Go binary that probing needs: is it Go, which version, where
//! its allocation entry points are, and where to attach inside each of them.
//! Pure: it reads an ELF image from bytes and never touches the kernel.

use std::path::{Path, PathBuf};

use iced_x86::{Code, Decoder, DecoderOptions, Register};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::error::TargetError;

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

impl GoBinary {
    /// Reads and analyses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let data = std::fs::read(path).map_err(|e| TargetError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(path, &data)
    }

    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, TargetError> {
        let not_go = || TargetError::NotGo(path.to_owned());
        let file = object::File::parse(data).map_err(|_| not_go())?;
        let is_go = [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
            .iter()
            .any(|s| file.section_by_name(s).is_some());
        if !is_go {
            return Err(not_go());
        }
        let go_version = file
            .section_by_name(".go.buildinfo")
            .and_then(|s| s.data().ok())
            .and_then(parse_buildinfo_version)
            .unwrap_or_else(|| "unknown".to_string());
        if file.symbol_by_name(MALLOCGC).is_none() && file.symbols().next().is_none() {
            return Err(TargetError::Stripped(path.to_owned()));
        }
        let alloc_points = alloc_points(path, &file)?;
        let first_load = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        Ok(Self {
            path: path.to_owned(),
            go_version,
            alloc_points,
            goroutines: goroutine_points(path, &file).map_err(|e| e.to_string()),
            g_layout: crate::gtypes::g_layout(data),
            gc: gc_points(path, &file, data).map_err(|e| e.to_string()),
            allgs: file.symbol_by_name("runtime.allgs").map(|s| s.address()),
            mem_profile_rate: file
                .symbol_by_name("runtime.MemProfileRate")
                .map(|s| s.address()),
            mbuckets: file.symbol_by_name("runtime.mbuckets").map(|s| s.address()),
            pie: file.kind() == object::ObjectKind::Dynamic,
            first_load,
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

fn alloc_points(path: &Path, file: &object::File<'_>) -> Result<Vec<ProbePoint>, TargetError> {
    let mallocgc = file
        .symbol_by_name(MALLOCGC)
        .ok_or_else(|| TargetError::MissingSymbol {
            path: path.to_owned(),
            symbol: MALLOCGC.into(),
        })?;
    // mallocgc forwards sizes below len(mallocNoScanTable) to the specialized
    // functions (Go ≥ 1.27); those are counted by their own probes.
    let floor = file
        .symbol_by_name("runtime.mallocNoScanTable")
        .map(|s| s.size() / 8)
        .unwrap_or(0);
    let mut syms = vec![(mallocgc, floor)];
    syms.extend(
        file.symbols()
            .filter(|s| s.name().is_ok_and(is_specialized_allocator))
            .map(|s| (s, 0)),
    );
    syms.iter()
        .map(|(sym, size_floor)| {
            let mut p = after_prologue(path, file, sym)?;
            p.size_floor = *size_floor;
            Ok(p)
        })
        .collect()
}

/// The code of a function symbol, its section's address and file offset.
fn function_code<'d>(
    path: &Path,
    file: &object::File<'d>,
    sym: &object::Symbol<'d, '_>,
) -> Result<(&'d [u8], u64, u64), TargetError> {
    let name = sym.name().unwrap_or_default().to_string();
    let err = || TargetError::Prologue {
        path: path.to_owned(),
        symbol: name.clone(),
    };
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(err)?;
    let (sec_off, _) = section.file_range().ok_or_else(err)?;
    let data = section.data().map_err(|_| err())?;
    let start = sym
        .address()
        .checked_sub(section.address())
        .ok_or_else(err)? as usize;
    let len = if sym.size() > 0 {
        sym.size() as usize
    } else {
        64
    };
    let code = data
        .get(start..(start + len).min(data.len()))
        .ok_or_else(err)?;
    Ok((code, section.address(), sec_off))
}

/// A probe point right after `sym`'s frame setup.
fn after_prologue(
    path: &Path,
    file: &object::File<'_>,
    sym: &object::Symbol<'_, '_>,
) -> Result<ProbePoint, TargetError> {
    let name = sym.name().unwrap_or_default().to_string();
    let (code, sec_addr, sec_off) = function_code(path, file, sym)?;
    let skip = after_frame_setup(&code[..code.len().min(64)], sym.address()).ok_or_else(|| {
        TargetError::Prologue {
            path: path.to_owned(),
            symbol: name.clone(),
        }
    })?;
    let vaddr = sym.address() + skip;
    Ok(ProbePoint {
        file_offset: vaddr - sec_addr + sec_off,
        vaddr,
        symbol: name,
        size_floor: 0,
    })
}

/// Probe points on every RET instruction of `sym` (to read a return value
/// without a uretprobe, which Go's moving stacks do not survive).
fn ret_points(
    path: &Path,
    file: &object::File<'_>,
    sym: &object::Symbol<'_, '_>,
) -> Result<Vec<ProbePoint>, TargetError> {
    let name = sym.name().unwrap_or_default().to_string();
    let (code, sec_addr, sec_off) = function_code(path, file, sym)?;
    let points: Vec<ProbePoint> = ret_offsets(code, sym.address())
        .into_iter()
        .map(|off| {
            let vaddr = sym.address() + off;
            ProbePoint {
                file_offset: vaddr - sec_addr + sec_off,
                vaddr,
                symbol: format!("{name} (ret)"),
                size_floor: 0,
            }
        })
        .collect();
    if points.is_empty() {
        return Err(TargetError::Prologue {
            path: path.to_owned(),
            symbol: name,
        });
    }
    Ok(points)
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

fn gc_points(path: &Path, file: &object::File<'_>, data: &[u8]) -> Result<GcPoints, TargetError> {
    let at = |name: &str| {
        let sym = file
            .symbol_by_name(name)
            .ok_or_else(|| TargetError::MissingSymbol {
                path: path.to_owned(),
                symbol: name.to_string(),
            })?;
        after_prologue(path, file, &sym)
    };
    let controller = file
        .symbol_by_name("runtime.gcController")
        .map(|s| s.address());
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

fn goroutine_points(path: &Path, file: &object::File<'_>) -> Result<GoroutinePoints, TargetError> {
    let sym = |name: &str| {
        file.symbol_by_name(name)
            .ok_or_else(|| TargetError::MissingSymbol {
                path: path.to_owned(),
                symbol: name.to_string(),
            })
    };
    let newproc1 = sym("runtime.newproc1")?;
    Ok(GoroutinePoints {
        newproc: after_prologue(path, file, &newproc1)?,
        newproc_rets: ret_points(path, file, &newproc1)?,
        goexit: after_prologue(path, file, &sym("runtime.goexit0")?)?,
    })
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

/// Reads the Go version from `.go.buildinfo` (Go ≥ 1.18 inline format: a
/// 32-byte header, then varint-length-prefixed version and module strings).
pub fn parse_buildinfo_version(data: &[u8]) -> Option<String> {
    if !data.starts_with(BUILDINFO_MAGIC) || data.len() < 32 {
        return None;
    }
    let flags = data[15];
    if flags & 0x2 == 0 {
        return None; // pre-1.18 pointer format
    }
    let (len, n) = read_uvarint(&data[32..])?;
    let start = 32 + n;
    let bytes = data.get(start..start.checked_add(len as usize)?)?;
    String::from_utf8(bytes.to_vec()).ok()
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
        data.push(0);
        assert_eq!(parse_buildinfo_version(&data).as_deref(), Some("go1.21.13"));
        data[15] = 0;
        assert_eq!(parse_buildinfo_version(&data), None);
        assert_eq!(parse_buildinfo_version(b"nope"), None);
    }

    #[test]
    fn rejects_non_elf() {
        let e = GoBinary::parse(Path::new("/x"), b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(matches!(e, TargetError::NotGo(_)));
    }
}
