//! The runtime's variables in a binary without a symbol table.
//!
//! `-ldflags=-s` drops `.symtab`, and with it the only names of data:
//! `runtime.mbuckets`, `runtime.MemProfileRate`, `runtime.allgs`,
//! `runtime.gcController`. The code that uses them is still there, and
//! `.gopclntab` still names it. Go's amd64 code reaches a global through a
//! RIP-relative operand, so each variable is found as the address that
//! two runtime functions using it both reference (decoded with iced-x86),
//! in the section its type puts it in. The evidence is cross-checked and
//! never guessed: the two functions must agree on exactly one address (or,
//! for a slice, on its pointer and length words), and a variable with a
//! known initial value must hold it in the file. When they disagree the
//! variable is not found, and the reason says why.
//!
//! Pure: it reads the ELF image and its function table.

use std::collections::BTreeSet;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use object::{Object as _, ObjectSection as _};

use crate::binary::gopclntab::GoTable;

/// Where an address or a structure layout memtrace reads came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The symbol table.
    Symbols,
    /// The machine code that uses it ([`locate`]).
    Code,
    /// The binary's DWARF.
    Dwarf,
    /// The runtime's own type descriptor, which reflection and the GC read
    /// (`crate::binary::gtypes::g_layout_from_type`).
    RuntimeType,
    /// memtrace's table for the binary's Go release, checked against DWARF.
    VersionTable,
}

impl Source {
    /// As `summary.json` and `doctor` write it.
    pub fn name(self) -> &'static str {
        match self {
            Source::Symbols => "symbols",
            Source::Code => "code",
            Source::Dwarf => "dwarf",
            Source::RuntimeType => "runtime_type",
            Source::VersionTable => "version_table",
        }
    }
}

/// A runtime variable's link-time address and how it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub addr: u64,
    pub source: Source,
}

/// What a variable looks like to the code that uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// One word.
    Word,
    /// A slice header: the witnesses read its pointer and length words.
    Slice,
}

/// How to find one variable from code.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    /// Functions that use the variable; every one present must reference it.
    witnesses: &'static [&'static str],
    /// Sections its type and initializer put it in.
    sections: &'static [&'static str],
    /// Count only `LEA` operands (the variable's address is taken, as for a
    /// method's receiver), not loads and stores of its fields.
    lea_only: bool,
    shape: Shape,
    /// The value it has in the file when it lies in an initialized section.
    initial: Option<u64>,
}

/// `runtime.mbuckets`: the memory profile's bucket list (`*bucket`, from Go
/// 1.21 an `atomic.UnsafePointer`). `mProf_FlushLocked` walks it;
/// `stkbucket` pushes onto it (and onto the block and mutex lists, which
/// `mProf_FlushLocked` does not touch).
pub const MBUCKETS: Rule = Rule {
    name: "runtime.mbuckets",
    witnesses: &["runtime.mProf_FlushLocked", "runtime.stkbucket"],
    sections: &[".bss"],
    lea_only: false,
    shape: Shape::Word,
    initial: None,
};

/// `runtime.MemProfileRate`: `profilealloc` and `allocmcache` both read it.
/// Initialized to 512 KiB in `.noptrdata` where the value is a constant;
/// in `.noptrbss` where an initializer function sets it (Go 1.19–1.20).
pub const MEM_PROFILE_RATE: Rule = Rule {
    name: "runtime.MemProfileRate",
    witnesses: &["runtime.profilealloc", "runtime.allocmcache"],
    sections: &[".noptrdata", ".noptrbss"],
    lea_only: false,
    shape: Shape::Word,
    initial: Some(512 * 1024),
};

/// `runtime.allgs`, the slice of every g: `forEachG` reads its pointer and
/// length, `allgadd` appends to it.
pub const ALLGS: Rule = Rule {
    name: "runtime.allgs",
    witnesses: &["runtime.forEachG", "runtime.allgadd"],
    sections: &[".bss"],
    lea_only: false,
    shape: Shape::Slice,
    initial: None,
};

/// `runtime.gcController`: `gcControllerCommit` and `gcinit` call its
/// methods, taking its address.
pub const GC_CONTROLLER: Rule = Rule {
    name: "runtime.gcController",
    witnesses: &["runtime.gcControllerCommit", "runtime.gcinit"],
    sections: &[".noptrbss", ".bss", ".noptrdata", ".data"],
    lea_only: true,
    shape: Shape::Word,
    initial: None,
};

/// Why a variable was not found from code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("{name}: fewer than two of the functions that use it are in the binary ({})", .witnesses.join(", "))]
    NoWitnesses {
        name: &'static str,
        witnesses: &'static [&'static str],
    },
    #[error("{name}: the binary has no {section} section")]
    NoSection {
        name: &'static str,
        section: &'static str,
    },
    #[error("{name}: the code disagrees: {}", .detail)]
    Disagree { name: &'static str, detail: String },
    #[error("{name}: {addr:#x} holds {found} in the file, not {expected}")]
    Value {
        name: &'static str,
        addr: u64,
        found: u64,
        expected: u64,
    },
}

/// Address ranges of named sections: `[start, end)`.
pub struct Sections(Vec<(String, u64, u64)>);

impl Sections {
    pub fn of(file: &object::File<'_>) -> Self {
        Self(
            file.sections()
                .filter_map(|s| Some((s.name().ok()?.to_string(), s.address(), s.size())))
                .map(|(n, a, z)| (n, a, a.saturating_add(z)))
                .collect(),
        )
    }

    #[cfg(test)]
    pub fn from_ranges(r: &[(&str, u64, u64)]) -> Self {
        Self(r.iter().map(|(n, a, b)| (n.to_string(), *a, *b)).collect())
    }

    fn range(&self, name: &str) -> Option<(u64, u64)> {
        self.0
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, a, b)| (*a, *b))
    }

    fn name_of(&self, addr: u64) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, a, b)| (*a..*b).contains(&addr))
            .map(|(n, _, _)| n.as_str())
    }
}

/// The RIP-relative data addresses a function's code references: every
/// memory operand, or only `LEA`s.
pub fn rip_operands(code: &[u8], ip: u64, lea_only: bool) -> BTreeSet<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insn = Instruction::default();
    let mut out = BTreeSet::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        // Branches and calls through memory are not data uses.
        if !insn.is_ip_rel_memory_operand()
            || matches!(insn.code(), Code::Call_rm64 | Code::Jmp_rm64)
            || (lea_only && insn.code() != Code::Lea_r64_m)
        {
            continue;
        }
        out.insert(insn.ip_rel_memory_address());
    }
    out
}

/// Finds `rule`'s variable from the code of its witnesses in `table`.
pub fn locate(table: &GoTable, sections: &Sections, rule: &Rule) -> Result<u64, LocateError> {
    let name = rule.name;
    let mut ranges = Vec::new();
    for s in rule.sections {
        if let Some(r) = sections.range(s) {
            ranges.push(r);
        }
    }
    if ranges.is_empty() {
        return Err(LocateError::NoSection {
            name,
            section: rule.sections[0],
        });
    }
    let in_sections = |a: &u64| ranges.iter().any(|(s, e)| (*s..*e).contains(a));
    let mut seen = Vec::new();
    let mut common: Option<BTreeSet<u64>> = None;
    for w in rule.witnesses {
        let Some(f) = table.function(w) else {
            continue;
        };
        let Some(code) = table.code(&f) else {
            continue;
        };
        let refs: BTreeSet<u64> = rip_operands(code, f.entry, rule.lea_only)
            .into_iter()
            .filter(in_sections)
            .collect();
        seen.push(*w);
        common = Some(match common {
            None => refs,
            Some(c) => c.intersection(&refs).copied().collect(),
        });
    }
    let common = match common {
        Some(c) if seen.len() >= 2 => c,
        _ => {
            return Err(LocateError::NoWitnesses {
                name,
                witnesses: rule.witnesses,
            })
        }
    };
    let addr = pick(&common, rule.shape).ok_or_else(|| LocateError::Disagree {
        name,
        detail: format!(
            "{} share {} in {} ({})",
            seen.join(" and "),
            match common.len() {
                0 => "no address".to_string(),
                n => format!("{n} addresses"),
            },
            rule.sections.join("/"),
            common
                .iter()
                .map(|a| format!("{a:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    if let Some(expected) = rule.initial {
        let initialized = sections
            .name_of(addr)
            .is_some_and(|s| s == ".noptrdata" || s == ".data");
        if initialized {
            let found = table
                .bytes_at(addr, 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0);
            if found != expected {
                return Err(LocateError::Value {
                    name,
                    addr,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(addr)
}

/// The one address `common` stands for, given the variable's shape.
fn pick(common: &BTreeSet<u64>, shape: Shape) -> Option<u64> {
    let v: Vec<u64> = common.iter().copied().collect();
    match (shape, v.as_slice()) {
        (Shape::Word, [a]) => Some(*a),
        // Pointer and length; the capacity word may be read as well.
        (Shape::Slice, [a, b]) if *b == a + 8 => Some(*a),
        (Shape::Slice, [a, b, c]) if *b == a + 8 && *c == a + 16 => Some(*a),
        _ => None,
    }
}

/// A variable from the symbol table when it has one, else from code.
pub fn find(
    symbol: Option<u64>,
    table: &GoTable,
    sections: &Sections,
    rule: &Rule,
) -> Result<Located, LocateError> {
    if let Some(addr) = symbol {
        return Ok(Located {
            addr,
            source: Source::Symbols,
        });
    }
    locate(table, sections, rule).map(|addr| Located {
        addr,
        source: Source::Code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rip_relative_operands_are_collected() {
        // mov 0x100(%rip),%rcx; lea 0x200(%rip),%rax; call *0x300(%rip); ret
        let code = [
            0x48, 0x8b, 0x0d, 0x00, 0x01, 0x00, 0x00, // mov rcx,[rip+0x100]
            0x48, 0x8d, 0x05, 0x00, 0x02, 0x00, 0x00, // lea rax,[rip+0x200]
            0xff, 0x15, 0x00, 0x03, 0x00, 0x00, // call [rip+0x300]
            0xc3,
        ];
        let all = rip_operands(&code, 0x1000, false);
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            vec![0x1007 + 0x100, 0x100e + 0x200]
        );
        let lea = rip_operands(&code, 0x1000, true);
        assert_eq!(lea.into_iter().collect::<Vec<_>>(), vec![0x100e + 0x200]);
    }

    #[test]
    fn shapes_pick_one_address_or_none() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        assert_eq!(pick(&set(&[0x10]), Shape::Word), Some(0x10));
        assert_eq!(pick(&set(&[0x10, 0x20]), Shape::Word), None);
        assert_eq!(pick(&set(&[]), Shape::Word), None);
        assert_eq!(pick(&set(&[0x10, 0x18]), Shape::Slice), Some(0x10));
        assert_eq!(pick(&set(&[0x10, 0x18, 0x20]), Shape::Slice), Some(0x10));
        assert_eq!(pick(&set(&[0x10, 0x20]), Shape::Slice), None);
        assert_eq!(pick(&set(&[0x10]), Shape::Slice), None);
    }

    #[test]
    fn sections_name_addresses() {
        let s = Sections::from_ranges(&[(".bss", 0x100, 0x200), (".noptrbss", 0x200, 0x300)]);
        assert_eq!(s.name_of(0x1ff), Some(".bss"));
        assert_eq!(s.name_of(0x200), Some(".noptrbss"));
        assert_eq!(s.name_of(0x300), None);
    }
}
