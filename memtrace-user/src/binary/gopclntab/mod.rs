//! Go's own function table, `.gopclntab`: present in every Go binary, even
//! one built with `-ldflags=-s -w`. It gives each function's entry address
//! and name, and through the inline tree the functions inlined at any pc, so
//! memtrace can both place probes and name frames without `.symtab` or DWARF.
//!
//! Layouts handled (`runtime/symtab.go`, `cmd/link/internal/ld/pcln.go`):
//! - pcHeader magic `0xfffffff0` (Go 1.18, 1.19) and `0xfffffff1` (Go 1.20+);
//!   older magics are rejected as unsupported.
//! - `pcHeader.textStart` is zero from Go 1.26 on: the text base then comes
//!   from `runtime.firstmoduledata.text`, found in the `.go.module` section
//!   (Go 1.26+) or by scanning data for the pointer to the pcHeader.
//! - Inline trees live in funcdata, at offsets from `moduledata.gofunc`.
//!
//! Pure: it reads an ELF image from bytes; nothing here touches a process.
//! Source positions (pc-value tables, inline trees) are in [`lines`].

mod elf;
mod lines;
mod names;
use elf::{find_header, find_moduledata, gofunc, to_file};
pub use lines::pcvalue;
pub use names::name_for_print;

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use crate::binary::file::FileBytes;

/// Why a binary's function table cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PclnError {
    #[error("no .gopclntab section or pcHeader found")]
    Missing,
    #[error(
        "unsupported pclntab format {0:#x} (Go 1.17 or older): memtrace supports Go 1.19 and newer"
    )]
    Unsupported(u32),
    #[error("malformed pclntab: {0}")]
    Malformed(&'static str),
}

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// `moduledata.text`: after pcHeader, six slices, findfunctab, minpc, maxpc.
const MODULEDATA_TEXT: u64 = 8 + 6 * 24 + 8 + 16;

/// A loadable segment: where virtual addresses live in the file.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vaddr: u64,
    memsz: u64,
    offset: u64,
    filesz: u64,
}

/// One function of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function<'t> {
    pub name: &'t str,
    /// Link-time virtual address of the first instruction.
    pub entry: u64,
    /// Address just past the function (the next function's entry).
    pub end: u64,
}

/// One source frame at a pc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrcFrame {
    /// As Go prints it (`runtime.funcNameForPrint`).
    pub function: String,
    /// The source file, as the compiler recorded it ("" when unknown).
    pub file: String,
    /// The line at this pc (for an outer frame: of the call), 0 when unknown.
    pub line: u32,
    /// The line the function starts on (Go 1.20+; 0 when unknown).
    pub start_line: u32,
    /// Inlined into the frame before it (its caller).
    pub inlined: bool,
}

/// A parsed `.gopclntab` with what it needs from the rest of the file.
pub struct GoTable {
    data: FileBytes,
    segments: Vec<Segment>,
    go118: bool,
    nfunc: usize,
    min_lc: u64,
    text: u64,
    /// File offsets of the tables.
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    pclntable: usize,
    /// File offset of `moduledata.gofunc`, when the moduledata was found.
    gofunc: Option<usize>,
    /// PIE binaries' pointers: `R_X86_64_RELATIVE` addends by address.
    relocs: std::collections::HashMap<u64, u64>,
    /// Build identity: Go build ID, else GNU build ID, else empty.
    pub build_id: String,
}

impl std::fmt::Debug for GoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoTable")
            .field("nfunc", &self.nfunc)
            .field("text", &format_args!("{:#x}", self.text))
            .field("inline", &self.gofunc.is_some())
            .field("build_id", &self.build_id)
            .finish()
    }
}

/// The longest name or file path memtrace reads from a table. Go's longest
/// names (generic instantiations) are a few hundred bytes; the bound keeps
/// a name without its terminating NUL from making every lookup scan the
/// rest of the file.
const MAX_NAME: usize = 4096;
/// The largest function whose code memtrace decodes: far above any Go
/// function, far below what a forged table could claim.
const MAX_FUNCTION: u64 = 16 << 20;

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated UTF-8 string at `off`, at most [`MAX_NAME`] bytes.
fn cstr(d: &[u8], off: usize) -> Option<&str> {
    let rest = d.get(off..)?;
    let rest = &rest[..rest.len().min(MAX_NAME + 1)];
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// Whether the NUL-terminated string at `off` is exactly `name`.
fn cstr_is(d: &[u8], off: usize, name: &str) -> bool {
    let Some(end) = off.checked_add(name.len()) else {
        return false;
    };
    d.get(off..end) == Some(name.as_bytes()) && d.get(end) == Some(&0)
}

fn uvarint(d: &[u8], pos: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    for i in 0..10 {
        let b = *d.get(*pos)?;
        *pos += 1;
        x |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

/// The Go build ID (`.note.go.buildid`) or, failing that, the GNU one.
pub fn build_id(file: &object::File<'_>) -> String {
    if let Some(d) = file
        .section_by_name(".note.go.buildid")
        .and_then(|s| s.data().ok())
    {
        // An ELF note: namesz, descsz, type, "Go\0\0", then the ID.
        if let (Some(namesz), Some(descsz)) = (u32_at(d, 0), u32_at(d, 4)) {
            let start = 12 + (namesz as usize).div_ceil(4) * 4;
            if let Some(id) = d.get(start..start + descsz as usize) {
                return String::from_utf8_lossy(id).into_owned();
            }
        }
    }
    match file.build_id() {
        Ok(Some(id)) => id.iter().map(|b| format!("{b:02x}")).collect(),
        _ => String::new(),
    }
}

impl GoTable {
    /// Parses the table of the ELF image `data`.
    pub fn parse(data: impl Into<FileBytes>) -> Result<Self, PclnError> {
        let data: FileBytes = data.into();
        let file = object::File::parse(&*data).map_err(|_| PclnError::Missing)?;
        let segments: Vec<Segment> = file
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                Segment {
                    vaddr: s.address(),
                    memsz: s.size(),
                    offset,
                    filesz,
                }
            })
            .collect();
        let relocs: std::collections::HashMap<u64, u64> = file
            .dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.kind() == object::RelocationKind::Relative)
            .map(|(at, r)| (at, r.addend() as u64))
            .collect();
        let (hdr_vaddr, hdr) = find_header(&file, &data).ok_or(PclnError::Missing)?;
        let magic = u32_at(&data, hdr).ok_or(PclnError::Missing)?;
        let go118 = match magic {
            MAGIC_118 => true,
            MAGIC_120 => false,
            m => return Err(PclnError::Unsupported(m)),
        };
        let bad = PclnError::Malformed;
        if data.get(hdr + 7) != Some(&8) {
            return Err(bad("pointer size is not 8 (memtrace supports amd64)"));
        }
        let min_lc = u64::from(data[hdr + 6]);
        let word = |i: usize| u64_at(&data, hdr + 8 + 8 * i).ok_or(bad("short header"));
        let nfunc = usize::try_from(word(0)?).map_err(|_| bad("function count too large"))?;
        // A pointer in the file: the relocation's addend in PIE binaries.
        let ptr = |vaddr: u64| -> Option<u64> {
            if let Some(a) = relocs.get(&vaddr) {
                return Some(*a);
            }
            u64_at(&data, to_file(&segments, vaddr)? as usize)
        };
        let moduledata = find_moduledata(&file, &data, &relocs, hdr_vaddr);
        let mut text = ptr(hdr_vaddr + 24).unwrap_or(0);
        if text == 0 {
            text = moduledata
                .and_then(|m| ptr(m + MODULEDATA_TEXT))
                .or_else(|| file.section_by_name(".text").map(|s| s.address()))
                .ok_or(bad("no text base"))?;
        }
        let at = |i: usize| -> Result<usize, PclnError> {
            usize::try_from(word(i)?)
                .ok()
                .and_then(|off| hdr.checked_add(off))
                .filter(|&at| at < data.len())
                .ok_or(bad("table offset past the end of the file"))
        };
        let gofunc = moduledata
            .and_then(|m| gofunc(&file, go118, m, &ptr))
            .and_then(|v| to_file(&segments, v))
            .map(|o| o as usize);
        let table = Self {
            build_id: build_id(&file),
            segments,
            go118,
            nfunc,
            min_lc: min_lc.max(1),
            text,
            funcnametab: at(3)?,
            cutab: at(4)?,
            filetab: at(5)?,
            pctab: at(6)?,
            pclntable: at(7)?,
            gofunc,
            data: data.clone(),
            relocs,
        };
        table.check_ftab()?;
        Ok(table)
    }

    /// The function table must fit in the file (its `nfunc + 1` entries of
    /// 8 bytes each: a count is believed only as far as bytes back it) and
    /// be in address order, as `runtime.findfunc` needs it.
    fn check_ftab(&self) -> Result<(), PclnError> {
        let bad = PclnError::Malformed;
        let bytes = self
            .nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(self.pclntable))
            .ok_or(bad("function count too large"))?;
        if bytes > self.data.len() {
            return Err(bad("function table past the end of the file"));
        }
        let mut last = 0u32;
        for i in 0..=self.nfunc {
            let (entry, _) = self.ftab(i).ok_or(bad("function table past the end"))?;
            if entry < last {
                return Err(bad("function table not in address order"));
            }
            last = entry;
        }
        Ok(())
    }

    /// A table without functions, for tests that need a binary but not its
    /// code.
    #[cfg(test)]
    pub fn empty() -> Self {
        Self {
            data: Vec::new().into(),
            segments: Vec::new(),
            go118: false,
            nfunc: 0,
            min_lc: 1,
            text: 0,
            funcnametab: 0,
            cutab: 0,
            filetab: 0,
            pctab: 0,
            pclntable: 0,
            gofunc: None,
            relocs: Default::default(),
            build_id: "test".into(),
        }
    }

    /// Gives back the pages of the file read so far (see
    /// [`FileBytes::release`]); lookups go on working.
    pub fn release_pages(&self) {
        self.data.release();
    }

    /// The whole file the table was read from.
    pub fn file_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Whether inline trees can be read (the moduledata was found).
    pub fn has_inline_info(&self) -> bool {
        self.gofunc.is_some()
    }

    /// Entry `i` of the function table: (entry offset, `_func` offset).
    fn ftab(&self, i: usize) -> Option<(u32, u32)> {
        let off = i.checked_mul(8)?.checked_add(self.pclntable)?;
        Some((u32_at(&self.data, off)?, u32_at(&self.data, off + 4)?))
    }

    fn name(&self, name_off: u32) -> Option<&str> {
        cstr(&self.data, self.funcnametab + name_off as usize)
    }

    /// Every function, in address order.
    pub fn functions(&self) -> impl Iterator<Item = Function<'_>> + '_ {
        (0..self.nfunc).filter_map(move |i| self.function_at(i))
    }

    fn function_at(&self, i: usize) -> Option<Function<'_>> {
        let (entry, _) = self.ftab(i)?;
        let (end, _) = self.ftab(i.checked_add(1)?)?;
        Some(Function {
            name: cstr(&self.data, self.name_offset(i)?)?,
            entry: self.text.checked_add(u64::from(entry))?,
            end: self.text.checked_add(u64::from(end))?,
        })
    }

    /// The function named exactly `name`. Assembly functions called from Go
    /// come with an ABI wrapper of the same name in pclntab (`.abi0` in the
    /// symbol table); the real body is the larger of the two.
    pub fn function(&self, name: &str) -> Option<Function<'_>> {
        (0..self.nfunc)
            .filter(|&i| {
                self.name_offset(i)
                    .is_some_and(|off| cstr_is(&self.data, off, name))
            })
            .filter_map(|i| self.function_at(i))
            .max_by_key(|f| f.end - f.entry)
    }

    /// The file offset of function `i`'s name.
    fn name_offset(&self, i: usize) -> Option<usize> {
        let (_, func) = self.ftab(i)?;
        let name_off = u32_at(&self.data, self.pclntable + func as usize + 4)?;
        Some(self.funcnametab + name_off as usize)
    }

    /// Whether `pc` is within the range of Go's function table.
    pub fn covers(&self, pc: u64) -> bool {
        let (Some((first, _)), Some((last, _))) = (self.ftab(0), self.ftab(self.nfunc)) else {
            return false;
        };
        let first = self.text.saturating_add(u64::from(first));
        let last = self.text.saturating_add(u64::from(last));
        (first..last).contains(&pc)
    }

    /// Index of the function containing `pc`.
    fn index_of(&self, pc: u64) -> Option<usize> {
        let rel = u32::try_from(pc.checked_sub(self.text)?).ok()?;
        let (first, _) = self.ftab(0)?;
        let (last, _) = self.ftab(self.nfunc)?;
        if rel < first || rel >= last {
            return None;
        }
        // The last entry whose offset is <= rel.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if self.ftab(mid)?.0 <= rel {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// The loaded segment holding the text: (start, end, file offset), at
    /// link-time addresses.
    pub fn text_segment(&self) -> Option<(u64, u64, u64)> {
        self.segments
            .iter()
            .find(|s| self.text >= s.vaddr && self.text - s.vaddr < s.memsz)
            .map(|s| (s.vaddr, s.vaddr.saturating_add(s.memsz), s.offset))
    }

    /// The file offset of a link-time virtual address.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        to_file(&self.segments, vaddr)
    }

    /// The link-time virtual address of a file offset in a loaded segment.
    pub fn vaddr_of(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.filesz)
            .and_then(|s| (offset - s.offset).checked_add(s.vaddr))
    }

    /// `len` bytes of the file at a link-time address (`None` past the
    /// file's part of a segment, e.g. in `.bss`).
    pub fn bytes_at(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(self.file_offset(vaddr)?).ok()?;
        let last = vaddr.checked_add(len.checked_sub(1)? as u64)?;
        let end = usize::try_from(to_file(&self.segments, last)?).ok()?;
        (end.checked_add(1)?.checked_sub(start)? == len).then_some(())?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// The pointer stored at a link-time address: in a PIE binary the
    /// relocation's addend, otherwise the word in the file.
    pub fn pointer_at(&self, vaddr: u64) -> Option<u64> {
        if let Some(a) = self.relocs.get(&vaddr) {
            return Some(*a);
        }
        u64_at(self.bytes_at(vaddr, 8)?, 0)
    }

    /// The machine code of `f`.
    pub fn code(&self, f: &Function<'_>) -> Option<&[u8]> {
        let len = f.end.checked_sub(f.entry).filter(|&l| l <= MAX_FUNCTION)?;
        let start = usize::try_from(self.file_offset(f.entry)?).ok()?;
        self.data.get(start..start.checked_add(len as usize)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pc_value_tables() {
        // value -1 → 0 for 4 bytes (delta +1: zigzag 2), then → 2 for 6 bytes
        // (delta +2: zigzag 4), then end.
        let table = [2u8, 4, 4, 6, 0];
        assert_eq!(pcvalue(&table, 0, 0x100, 1, 0x100), Some(0));
        assert_eq!(pcvalue(&table, 0, 0x100, 1, 0x103), Some(0));
        assert_eq!(pcvalue(&table, 0, 0x100, 1, 0x104), Some(2));
        assert_eq!(pcvalue(&table, 0, 0x100, 1, 0x109), Some(2));
        assert_eq!(pcvalue(&table, 0, 0x100, 1, 0x10a), None);
        // A negative delta: 0 → -1 (zigzag 1).
        let back = [2u8, 2, 1, 2, 0];
        assert_eq!(pcvalue(&back, 0, 0, 1, 3), Some(-1));
        // Truncated input is not an answer.
        assert_eq!(pcvalue(&[0x80u8], 0, 0, 1, 0), None);
    }

    #[test]
    fn prints_names_as_go_does() {
        assert_eq!(name_for_print("main.leak"), "main.leak");
        assert_eq!(name_for_print("main.(*T).m"), "main.(*T).m");
        assert_eq!(name_for_print("main.F[go.shape.int]"), "main.F[...]");
        assert_eq!(
            name_for_print("main.(*T[go.shape.int]).m[go.shape.string]"),
            "main.(*T[...]).m[...]"
        );
        assert_eq!(name_for_print("main.G[go.shape.[]uint8]"), "main.G[...]");
        assert_eq!(name_for_print("type:.eq.[5]int"), "type:.eq.[...]int");
        assert_eq!(name_for_print("bad]name["), "bad]name[");
    }

    #[test]
    fn rejects_non_go() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(GoTable::parse(exe).unwrap_err(), PclnError::Missing);
    }
}
