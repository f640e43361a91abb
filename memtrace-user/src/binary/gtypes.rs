//! Field offsets of Go runtime structures. The layout of `runtime.g`
//! changes between Go versions, so offsets are looked up rather than
//! assumed: from the binary's DWARF when it has any, else from the
//! runtime's own type descriptor of `runtime.g`, which survives
//! `-ldflags=-s -w` because the garbage collector and reflection read it
//! (`runtime.malg` allocates every g with `new(g)`, so its code names the
//! descriptor). `runtime.gcControllerState` has no descriptor (the
//! controller is a global, never allocated): its offsets come from a table
//! per Go release, which the end-to-end tests hold against DWARF.

use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Register};
use object::{Object as _, ObjectSection as _};

use crate::binary::gopclntab::GoTable;

/// Offsets (bytes) of the `runtime.g` fields the goroutines lens reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GLayout {
    pub atomicstatus: u64,
    pub goid: u64,
    pub gopc: u64,
    pub startpc: u64,
    /// `labels`: the goroutine's pprof label set.
    pub labels: u64,
    /// `m`: the thread running it.
    pub m: u64,
}

impl GLayout {
    /// From a structure's member offsets by name.
    fn from_members(m: &HashMap<String, u64>) -> Option<Self> {
        // Every g starts with its stack bounds (read by the breakdown).
        (m.get("stack") == Some(&0)).then_some(())?;
        Some(Self {
            atomicstatus: *m.get("atomicstatus")?,
            goid: *m.get("goid")?,
            gopc: *m.get("gopc")?,
            startpc: *m.get("startpc")?,
            labels: *m.get("labels")?,
            m: *m.get("m")?,
        })
    }
}

/// zlib's largest ratio of output to input (RFC 1950: 1032:1).
const ZLIB_MAX_RATIO: u64 = 1032;
/// The largest debug section memtrace decompresses. A larger one is not
/// read: the layouts then come from the runtime's type descriptor or the
/// release's table, and a forged size cannot take the agent's memory.
const MAX_SECTION: u64 = 64 << 20;
/// The DWARF sections a structure's members are read from; the rest
/// (lines, locations, ranges) are never decompressed.
const STRUCT_SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
    gimli::SectionId::DebugLineStr,
];

/// A section's bytes, decompressed when compressed. The size a compressed
/// section declares is believed only up to what its data could produce:
/// a corrupted header must not make memtrace reserve a terabyte.
fn section_bytes<'d>(s: &object::Section<'d, '_>) -> Option<std::borrow::Cow<'d, [u8]>> {
    let c = s.compressed_data().ok()?;
    plausible_size(c.format, c.data.len() as u64, c.uncompressed_size).then_some(())?;
    c.decompress().ok()
}

/// Whether `declared` bytes can come from `len` bytes compressed as `format`.
fn plausible_size(format: object::CompressionFormat, len: u64, declared: u64) -> bool {
    match format {
        object::CompressionFormat::None => true,
        object::CompressionFormat::Zlib => {
            declared <= len.saturating_mul(ZLIB_MAX_RATIO).min(MAX_SECTION)
        }
        _ => declared <= MAX_SECTION,
    }
}

/// Member offsets of the structure `type_name` in `data` (an ELF file).
pub fn struct_members(data: &[u8], type_name: &str) -> Option<HashMap<String, u64>> {
    let file = object::File::parse(data).ok()?;
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        if !STRUCT_SECTIONS.contains(&id) {
            return Ok(std::borrow::Cow::Borrowed(&[]));
        }
        let name = id.name();
        let z = format!(".zdebug_{}", name.trim_start_matches(".debug_"));
        Ok(file
            .section_by_name(name)
            .or_else(|| file.section_by_name(&z))
            .and_then(|s| section_bytes(&s))
            .unwrap_or(std::borrow::Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
    // Names are read from the entries alone (inline or in .debug_str), so
    // a unit is read without its line program, which is never loaded.
    let name_of = |e: &gimli::DebuggingInformationEntry<_>| {
        e.attr_value(gimli::DW_AT_name)
            .and_then(|v| v.string_value(&dwarf.debug_str))
            .map(|s| s.to_string_lossy().into_owned())
    };
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(abbrevs) = dwarf.abbreviations(&header) else {
            continue;
        };
        let mut tree = header.entries_tree(&abbrevs, None).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        while let Ok(Some(node)) = children.next() {
            let e = node.entry();
            if e.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            if name_of(e).as_deref() != Some(type_name) {
                continue;
            }
            let mut out = HashMap::new();
            let mut members = node.children();
            while let Ok(Some(m)) = members.next() {
                let m = m.entry();
                if m.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let mname = name_of(m);
                let off = m
                    .attr_value(gimli::DW_AT_data_member_location)
                    .and_then(|v| v.udata_value());
                if let (Some(n), Some(o)) = (mname, off) {
                    out.insert(n, o);
                }
            }
            return Some(out);
        }
    }
    None
}

/// The `runtime.g` layout of a Go binary, if its DWARF is present.
pub fn g_layout(data: &[u8]) -> Option<GLayout> {
    GLayout::from_members(&struct_members(data, "runtime.g")?)
}

/// `abi.Kind` of a struct.
const KIND_STRUCT: u8 = 25;
/// `abi.Type` is 48 bytes on amd64; a `StructType` then has its package
/// path (8 bytes) and its fields slice.
const STRUCT_FIELDS: u64 = 48 + 8;
/// A `StructField` is {name, type, offset}, one word each (Go 1.19+).
const FIELD_SIZE: u64 = 24;

/// The `runtime.g` layout from the runtime's type descriptor, found as the
/// type `runtime.malg` passes to `runtime.newobject` (`LEAQ type, AX;
/// CALL runtime.newobject`). The descriptor must be a struct whose fields
/// include every one memtrace reads, with `stack` first.
pub fn g_layout_from_type(table: &GoTable) -> Result<GLayout, String> {
    let typ = allocated_type(table, "runtime.malg")
        .ok_or("runtime.malg does not pass a type to runtime.newobject")?;
    let members = struct_fields(table, typ)
        .ok_or_else(|| format!("no struct type descriptor at {typ:#x}"))?;
    GLayout::from_members(&members)
        .ok_or_else(|| format!("the type at {typ:#x} is not runtime.g (fields missing)"))
}

/// `curg` in `runtime.m` (the user goroutine a thread runs), from DWARF
/// or the type `runtime.allocm` allocates.
pub fn m_curg(data: &[u8], table: &GoTable) -> Option<u64> {
    let members = struct_members(data, "runtime.m").or_else(|| {
        let typ = allocated_type(table, "runtime.allocm")?;
        struct_fields(table, typ)
    })?;
    members.get("curg").copied()
}

/// The type descriptor `caller` first hands to `runtime.newobject`.
fn allocated_type(table: &GoTable, caller: &str) -> Option<u64> {
    let f = table.function(caller)?;
    let newobject = table.function("runtime.newobject")?.entry;
    let code = table.code(&f)?;
    let mut decoder = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE);
    let mut type_in_ax = None;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.code() == Code::Call_rel32_64 && insn.near_branch_target() == newobject {
            return type_in_ax;
        }
        if insn.op_count() > 0 && insn.op0_register() == Register::RAX {
            type_in_ax = (insn.code() == Code::Lea_r64_m && insn.is_ip_rel_memory_operand())
                .then(|| insn.ip_rel_memory_address());
        }
    }
    None
}

/// Member offsets of the struct type descriptor at `typ`.
fn struct_fields(table: &GoTable, typ: u64) -> Option<HashMap<String, u64>> {
    let word = |a: u64| Some(u64::from_le_bytes(table.bytes_at(a, 8)?.try_into().ok()?));
    let kind = table.bytes_at(typ + 23, 1)?[0] & 0x1f;
    (kind == KIND_STRUCT).then_some(())?;
    let fields = table.pointer_at(typ + STRUCT_FIELDS)?;
    let n = word(typ + STRUCT_FIELDS + 8)?;
    (n <= 1024).then_some(())?;
    let mut out = HashMap::new();
    for i in 0..n {
        let f = fields + i * FIELD_SIZE;
        let name = type_name(table, table.pointer_at(f)?)?;
        out.insert(name, word(f + 16)?);
    }
    Some(out)
}

/// An `abi.Name`: a flags byte, a uvarint length, the bytes.
fn type_name(table: &GoTable, at: u64) -> Option<String> {
    let head = table.bytes_at(at, 3)?;
    let (len, used) = match head[1] {
        b if b < 0x80 => (u64::from(b), 1),
        b => (u64::from(b & 0x7f) | (u64::from(head[2]) << 7), 2),
    };
    let bytes = table.bytes_at(at + 1 + used, usize::try_from(len).ok()?.max(1))?;
    Some(String::from_utf8_lossy(&bytes[..len as usize]).into_owned())
}

/// Offsets in `runtime.gcControllerState` of the fields the GC view reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcFields {
    pub heap_live: u64,
    pub heap_goal: u64,
    pub heap_marked: u64,
}

impl GcFields {
    /// From the binary's DWARF.
    pub fn from_dwarf(data: &[u8]) -> Option<Self> {
        let m = struct_members(data, "runtime.gcControllerState")?;
        Some(Self {
            heap_live: *m.get("heapLive")?,
            heap_goal: *m.get("gcPercentHeapGoal")?,
            heap_marked: *m.get("heapMarked")?,
        })
    }

    /// memtrace's table for a Go release (minor version), for binaries
    /// without DWARF. Only releases whose DWARF was read are listed
    /// (Go 1.20 was not: no toolchain of it here).
    pub fn for_release(minor: u32) -> Option<Self> {
        let (heap_goal, heap_live, heap_marked) = match minor {
            19 => (104, 136, 184),
            21..=27 => (72, 104, 152),
            _ => return None,
        };
        Some(Self {
            heap_live,
            heap_goal,
            heap_marked,
        })
    }
}

/// `_Gdead` in `runtime/runtime2.go`; the `_Gscan` bit is 0x1000.
pub const G_DEAD: u32 = 6;
pub const G_SCAN: u32 = 0x1000;

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use object::{CompressionFormat, Object as _};

    use super::*;

    /// An ELF file with one zlib-compressed `.debug_info` section holding
    /// `content`, its header declaring `declared` bytes.
    fn elf_with_compressed_section(content: &[u8], declared: u64) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(content).unwrap();
        let mut sec = Vec::new();
        for v in [1u32, 0] {
            sec.extend(v.to_le_bytes()); // ch_type ELFCOMPRESS_ZLIB, reserved
        }
        sec.extend(declared.to_le_bytes());
        sec.extend(1u64.to_le_bytes());
        sec.extend(z.finish().unwrap());
        let names = b"\0.debug_info\0.shstrtab\0";
        let (sec_off, names_off) = (64, 64 + sec.len());
        let sh_off = (names_off + names.len()).next_multiple_of(8);
        let mut f = vec![0u8; sh_off];
        f[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        let mut hdr = Vec::new();
        hdr.extend(2u16.to_le_bytes()); // ET_EXEC
        hdr.extend(62u16.to_le_bytes()); // EM_X86_64
        hdr.extend(1u32.to_le_bytes());
        hdr.extend(
            [0u64, 0, sh_off as u64]
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        hdr.extend(0u32.to_le_bytes());
        hdr.extend([64u16, 0, 0, 64, 3, 2].iter().flat_map(|v| v.to_le_bytes()));
        f[16..64].copy_from_slice(&hdr);
        f[sec_off..names_off].copy_from_slice(&sec);
        f[names_off..names_off + names.len()].copy_from_slice(names);
        let sh = |name: u32, kind: u32, flags: u64, off: usize, size: usize| {
            let mut h = Vec::new();
            h.extend(name.to_le_bytes());
            h.extend(kind.to_le_bytes());
            h.extend(
                [flags, 0, off as u64, size as u64]
                    .iter()
                    .flat_map(|v| v.to_le_bytes()),
            );
            h.extend([0u32, 0].iter().flat_map(|v| v.to_le_bytes()));
            h.extend([1u64, 0].iter().flat_map(|v| v.to_le_bytes()));
            h
        };
        f.extend(vec![0u8; 64]);
        f.extend(sh(1, 1, 0x800, sec_off, sec.len())); // SHF_COMPRESSED
        f.extend(sh(13, 3, 0, names_off, names.len()));
        f
    }

    fn debug_info(elf: &[u8]) -> Option<Vec<u8>> {
        let file = object::File::parse(elf).unwrap();
        let s = file.section_by_name(".debug_info").unwrap();
        section_bytes(&s).map(|b| b.into_owned())
    }

    #[test]
    fn a_compressed_section_is_read_when_its_size_is_possible() {
        let content = vec![7u8; 4096];
        let honest = elf_with_compressed_section(&content, 4096);
        assert_eq!(debug_info(&honest), Some(content.clone()));
        // A corrupted header's size (16 TiB from a few bytes of zlib) leaves
        // the section unread. Without a sanitizer a reservation that large
        // fails anyway; the bound that refuses it is checked in the next test,
        // and under the sanitizer by fuzz/regressions/go_binary/.
        let lying = elf_with_compressed_section(&content, 1 << 44);
        assert_eq!(debug_info(&lying), None);
        assert_eq!(struct_members(&lying, "runtime.g"), None);
    }

    #[test]
    fn declared_sizes_are_bounded_by_the_compression_ratio_and_a_ceiling() {
        let zlib = CompressionFormat::Zlib;
        assert!(plausible_size(zlib, 1000, 1_032_000));
        assert!(!plausible_size(zlib, 1000, 1_032_001));
        assert!(plausible_size(zlib, 1 << 20, 64 << 20));
        assert!(!plausible_size(zlib, 1 << 20, (64 << 20) + 1));
        assert!(plausible_size(CompressionFormat::Zstandard, 10, 64 << 20));
        assert!(!plausible_size(
            CompressionFormat::Zstandard,
            10,
            (64 << 20) + 1
        ));
        assert!(plausible_size(CompressionFormat::None, 10, u64::MAX));
    }
}
