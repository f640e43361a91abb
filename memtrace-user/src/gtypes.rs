//! Field offsets of Go runtime structures, from the binary's DWARF. The
//! layout of `runtime.g` changes between Go versions, so offsets are looked
//! up rather than assumed.

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _};

/// Offsets (bytes) of the `runtime.g` fields the goroutines lens reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GLayout {
    pub atomicstatus: u64,
    pub gopc: u64,
    pub startpc: u64,
}

/// zlib's largest ratio of output to input (RFC 1950: 1032:1).
const ZLIB_MAX_RATIO: u64 = 1032;
/// The largest debug section memtrace decompresses, far above what a Go
/// binary's debug sections hold.
const MAX_SECTION: u64 = 1 << 30;

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
    let name_of = |unit: &gimli::Unit<_>, e: &gimli::DebuggingInformationEntry<_>| {
        e.attr_value(gimli::DW_AT_name)
            .and_then(|v| dwarf.attr_string(unit, v).ok())
            .map(|s| s.to_string_lossy().into_owned())
    };
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut tree = unit.entries_tree(None).ok()?;
        let root = tree.root().ok()?;
        let mut children = root.children();
        while let Ok(Some(node)) = children.next() {
            let e = node.entry();
            if e.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            if name_of(&unit, e).as_deref() != Some(type_name) {
                continue;
            }
            let mut out = HashMap::new();
            let mut members = node.children();
            while let Ok(Some(m)) = members.next() {
                let m = m.entry();
                if m.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let mname = name_of(&unit, m);
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
    let m = struct_members(data, "runtime.g")?;
    Some(GLayout {
        atomicstatus: *m.get("atomicstatus")?,
        gopc: *m.get("gopc")?,
        startpc: *m.get("startpc")?,
    })
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
        assert!(plausible_size(zlib, 10 << 20, 1 << 30));
        assert!(!plausible_size(zlib, 10 << 20, (1 << 30) + 1));
        assert!(plausible_size(CompressionFormat::Zstandard, 10, 1 << 30));
        assert!(!plausible_size(
            CompressionFormat::Zstandard,
            10,
            (1 << 30) + 1
        ));
        assert!(plausible_size(CompressionFormat::None, 10, u64::MAX));
    }
}
