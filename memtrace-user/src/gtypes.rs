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

/// Member offsets of the structure `type_name` in `data` (an ELF file).
pub fn struct_members(data: &[u8], type_name: &str) -> Option<HashMap<String, u64>> {
    let file = object::File::parse(data).ok()?;
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'_, [u8]>, gimli::Error> {
        let name = id.name();
        let z = format!(".zdebug_{}", name.trim_start_matches(".debug_"));
        Ok(file
            .section_by_name(name)
            .or_else(|| file.section_by_name(&z))
            .and_then(|s| s.uncompressed_data().ok())
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
