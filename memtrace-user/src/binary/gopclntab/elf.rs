//! Where the table and the runtime's moduledata sit in the ELF file, and
//! link-time addresses to file offsets.

use object::{Object as _, ObjectSection as _};

use super::{u32_at, u64_at, Segment, MAGIC_118, MAGIC_120};

pub(super) fn to_file(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.memsz.min(s.filesz))
        .and_then(|s| (vaddr - s.vaddr).checked_add(s.offset))
}

/// The pcHeader: the `.gopclntab` section (or its external-linking name),
/// else the first read-only place holding a Go pcHeader magic.
pub(super) fn find_header(file: &object::File<'_>, data: &[u8]) -> Option<(u64, usize)> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(s) = file.section_by_name(name) {
            let (off, _) = s.file_range()?;
            return Some((s.address(), off as usize));
        }
    }
    for s in file.sections() {
        let Some((off, size)) = s.file_range() else {
            continue;
        };
        if !s
            .name()
            .is_ok_and(|n| n.contains("rodata") || n.contains("rel.ro"))
        {
            continue;
        }
        let end = usize::try_from(off.checked_add(size)?).ok()?;
        let bytes = data.get(usize::try_from(off).ok()?..end)?;
        let hit = (0..bytes.len().saturating_sub(16)).step_by(8).find(|&i| {
            matches!(u32_at(bytes, i), Some(MAGIC_118 | MAGIC_120))
                && bytes[i + 4..i + 8] == [0, 0, 1, 8]
        });
        if let Some(i) = hit {
            return Some((s.address() + i as u64, off as usize + i));
        }
    }
    None
}

/// The link-time address of `runtime.firstmoduledata`: the `.go.module`
/// section (Go 1.26+), else the data word pointing at the pcHeader.
pub(super) fn find_moduledata(
    file: &object::File<'_>,
    data: &[u8],
    relocs: &std::collections::HashMap<u64, u64>,
    header: u64,
) -> Option<u64> {
    if let Some(s) = file.section_by_name(".go.module") {
        return Some(s.address());
    }
    if let Some((&at, _)) = relocs.iter().filter(|(_, &a)| a == header).min() {
        return Some(at);
    }
    for name in [".noptrdata", ".data", ".data.rel.ro"] {
        let Some(s) = file.section_by_name(name) else {
            continue;
        };
        let Some((off, size)) = s.file_range() else {
            continue;
        };
        // The section's claimed size is believed only as far as the file
        // backs it: a forged one must not make this scan endless.
        let Some(bytes) = usize::try_from(off)
            .ok()
            .and_then(|off| data.get(off..off.checked_add(usize::try_from(size).ok()?)?))
        else {
            continue;
        };
        let hit = (0..bytes.len().saturating_sub(7))
            .step_by(8)
            .find(|&i| u64_at(bytes, i) == Some(header));
        if let Some(i) = hit {
            return s.address().checked_add(i as u64);
        }
    }
    None
}

/// `moduledata.gofunc`. Its offset grew as fields were added: 304 in Go
/// 1.18–1.19, 320 with the coverage counters (1.20), 344 once the type and
/// itab bounds were added (1.27). The field before it is `rodata`, a pointer
/// into `.rodata` (its start, or just past it with the external linker),
/// which tells the layouts apart.
pub(super) fn gofunc(
    file: &object::File<'_>,
    go118: bool,
    moduledata: u64,
    ptr: &dyn Fn(u64) -> Option<u64>,
) -> Option<u64> {
    let rodata = file
        .section_by_name(".rodata")
        .map(|s| s.address()..s.address().saturating_add(s.size()));
    let candidates: &[u64] = if go118 { &[304] } else { &[320, 344] };
    candidates.iter().find_map(|&off| {
        let v = ptr(moduledata + off)?;
        let before = ptr(moduledata + off - 8)?;
        let plausible = match &rodata {
            Some(r) => r.contains(&before) && v >= before,
            None => v != 0,
        };
        plausible.then_some(v)
    })
}
