//! Facts about a Go binary that probing needs: is it Go, which version
//! (`buildinfo`), where its allocation entry points, runtime hooks and hold
//! points are, and where to attach inside each of them (`points`). Pure:
//! it reads an ELF image from bytes and never touches the kernel.

mod buildinfo;
mod code;
mod points;
pub mod vars;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

use crate::binary::file::FileBytes;
use crate::binary::gopclntab::{GoTable, PclnError};
use crate::model::error::TargetError;

pub use buildinfo::{go_release, parse_buildinfo, BuildInfo};
use points::Binary;
pub use points::{
    after_frame_setup, is_specialized_allocator, makes_exit_group, ret_offsets, GcPoints,
    GoroutinePoints, HoldPoints, ProbePoint,
};
pub use vars::Source;

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
    /// Built with `-ldflags=-s`: no `.symtab`, so no data symbols (they
    /// are found from code instead).
    pub stripped: bool,
    /// Where each runtime variable and structure layout memtrace reads
    /// came from, or why it could not be found.
    pub found: BTreeMap<&'static str, Result<Source, String>>,
    pub alloc_points: Vec<ProbePoint>,
    /// Probe points of the GC view, or why there are none.
    pub gc: Result<GcPoints, String>,
    /// `runtime.g` field offsets, from DWARF or the runtime's type
    /// descriptor.
    pub g_layout: Option<crate::binary::gtypes::GLayout>,
    /// Probe points of the goroutines lens, or why there are none.
    pub goroutines: Result<GoroutinePoints, String>,
    /// How its pprof label sets are laid out, when it can set any (it
    /// links `runtime/pprof.runtime_setProfLabel`) and `g.labels` is known.
    pub labels: Option<crate::binary::labels::Format>,
    /// `curg` in `runtime.m`, for labels read on the system stack.
    pub m_curg: Option<u64>,
    /// Where the target holds itself for user space, or why it cannot.
    pub holds: Result<HoldPoints, String>,
    /// Link-time address of `runtime.allgs` (for goroutine stack sizes).
    pub allgs: Option<u64>,
    /// Link-time addresses of `runtime.MemProfileRate` and
    /// `runtime.mbuckets` (the alloc and heap lenses).
    pub mem_profile_rate: Option<u64>,
    pub mbuckets: Option<u64>,
    /// Whether the binary is position independent (ET_DYN).
    pub pie: bool,
    /// Imports symbols from shared libraries (libc): C code is linked in.
    pub imports_c: bool,
    /// Lowest PT_LOAD virtual address, page aligned (for PIE load bias).
    pub first_load: u64,
}

/// What `pprof.SetGoroutineLabels` and `pprof.Do` call: a binary without it
/// never sets labels.
pub const SET_PROF_LABEL: &str = "runtime/pprof.runtime_setProfLabel";

/// Keys of [`GoBinary::found`] for the structure layouts.
pub const G_LAYOUT: &str = "runtime.g layout";
pub const GC_LAYOUT: &str = "runtime.gcControllerState layout";

/// The oldest Go release memtrace is tested with.
pub const OLDEST_GO: (u32, u32) = (1, 19);
/// The newest Go release memtrace is tested with.
pub const NEWEST_GO: (u32, u32) = (1, 27);

impl GoBinary {
    /// Maps and analyses the file at `path`; the pages parsing read are
    /// given back before it returns.
    pub fn open(path: &Path) -> Result<Self, TargetError> {
        let data = FileBytes::open(path).map_err(|e| TargetError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let parsed = Self::parse(path, data.clone());
        data.release();
        parsed
    }

    /// Analyses the ELF image `data`, read from `path`.
    pub fn parse(path: &Path, data: impl Into<FileBytes>) -> Result<Self, TargetError> {
        let data: FileBytes = data.into();
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
        let mut found = BTreeMap::new();
        let sections = vars::Sections::of(&file);
        let mut var = |rule: &vars::Rule| {
            let r = vars::find(syms.address(rule.name), &table, &sections, rule);
            keep(
                &mut found,
                rule.name,
                r.map(|l| (l.addr, l.source)).map_err(|e| e.to_string()),
            )
        };
        let allgs = var(&vars::ALLGS);
        let mem_profile_rate = var(&vars::MEM_PROFILE_RATE);
        let mbuckets = var(&vars::MBUCKETS);
        let gc_controller = var(&vars::GC_CONTROLLER);
        let (g_layout, gc_fields) = layouts(&data, &table, &go_version, &mut found);
        let labels = table
            .function(SET_PROF_LABEL)
            .and(g_layout)
            .and_then(|_| go_release(&go_version))
            .map(crate::binary::labels::Format::of);
        let first_load = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        Ok(Self {
            path: path.to_owned(),
            go_version,
            module,
            stripped: syms.stripped,
            found,
            alloc_points,
            goroutines: bin
                .goroutine_points()
                .map(|mut g| {
                    // With the g layout, creation takes one probe.
                    // The call to runqput(pp, newg, true) that follows
                    // newproc1 is emulated at a uprobe (one trap); the
                    // instruction after the newproc1 call, the fallback, is not.
                    g.spawned = g_layout.and_then(|l| {
                        let func1 = "runtime.newproc.func1";
                        let (mut p, at_runqput) = match bin.at_call(func1, "runtime.runqput") {
                            Some(p) => (p, true),
                            None => (bin.after_call(func1, "runtime.newproc1")?, false),
                        };
                        p.cookie = memtrace_common::SpawnCookie {
                            startpc: u32::try_from(l.startpc).ok()?,
                            gopc: u32::try_from(l.gopc).unwrap_or(0).min(0x7fff_ffff),
                            at_runqput,
                        }
                        .encode();
                        Some(p)
                    });
                    g
                })
                .map_err(|e| e.to_string()),
            holds: bin.hold_points().map_err(|e| e.to_string()),
            labels,
            m_curg: labels.and_then(|_| crate::binary::gtypes::m_curg(&data, &table)),
            g_layout,
            gc: bin
                .gc_points(gc_controller, gc_fields)
                .map_err(|e| e.to_string()),
            allgs,
            mem_profile_rate,
            mbuckets,
            pie: file.kind() == object::ObjectKind::Dynamic,
            imports_c: file.imports().is_ok_and(|i| !i.is_empty()),
            first_load,
            table: Arc::new(table),
        })
    }

    /// A binary with no code to probe, for tests of what is built on it.
    #[cfg(test)]
    pub fn for_tests(path: &str) -> Self {
        Self {
            path: path.into(),
            go_version: "go1.27.3".into(),
            module: None,
            table: Arc::new(GoTable::empty()),
            stripped: false,
            found: BTreeMap::new(),
            alloc_points: Vec::new(),
            gc: Err("no GC probes in tests".into()),
            g_layout: None,
            goroutines: Err("no goroutine probes in tests".into()),
            holds: Err("no hold probes in tests".into()),
            labels: None,
            m_curg: None,
            allgs: None,
            mem_profile_rate: None,
            mbuckets: None,
            pie: false,
            imports_c: false,
            first_load: 0,
        }
    }

    /// Translates a link-time address to the running process's, given the
    /// executable's mappings (PIE binaries load at a random base).
    pub fn runtime_addr(
        &self,
        vaddr: u64,
        exe_maps: &[crate::host::procfs::MapEntry],
    ) -> Option<u64> {
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

    /// [`GoBinary::found`] as words: the source's name, or `missing: why`.
    pub fn found_names(&self) -> BTreeMap<String, String> {
        self.found
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Ok(s) => s.name().to_string(),
                    Err(why) => format!("missing: {why}"),
                };
                (k.to_string(), v)
            })
            .collect()
    }

    /// The error for a feature that needs a runtime variable this binary
    /// did not give away.
    pub fn missing(&self, symbol: &str, needed_by: &str) -> TargetError {
        if self.stripped {
            TargetError::Stripped {
                path: self.path.clone(),
                symbol: symbol.to_string(),
                needed_by: needed_by.to_string(),
                reason: match self.found.get(symbol) {
                    Some(Err(why)) => why.clone(),
                    _ => "not looked for".to_string(),
                },
            }
        } else {
            TargetError::MissingSymbol {
                path: self.path.clone(),
                symbol: symbol.to_string(),
            }
        }
    }
}

/// The layouts of `runtime.g` (DWARF, else the runtime's type descriptor)
/// and of `runtime.gcControllerState` (DWARF, else the table for the Go
/// release), each recorded in `found` with its source or why it is missing.
fn layouts(
    data: &[u8],
    table: &GoTable,
    go_version: &str,
    found: &mut BTreeMap<&'static str, Result<Source, String>>,
) -> (
    Option<crate::binary::gtypes::GLayout>,
    Option<crate::binary::gtypes::GcFields>,
) {
    let g = match crate::binary::gtypes::g_layout(data) {
        Some(l) => Ok((l, Source::Dwarf)),
        None => crate::binary::gtypes::g_layout_from_type(table).map(|l| (l, Source::RuntimeType)),
    };
    let gc = match crate::binary::gtypes::GcFields::from_dwarf(data) {
        Some(f) => Ok((f, Source::Dwarf)),
        None => go_release(go_version)
            .and_then(|(_, minor)| crate::binary::gtypes::GcFields::for_release(minor))
            .map(|f| (f, Source::VersionTable))
            .ok_or_else(|| format!("no DWARF, and memtrace has no table for {go_version}")),
    };
    (keep(found, G_LAYOUT, g), keep(found, GC_LAYOUT, gc))
}

/// Records where a runtime fact came from (or why it is missing) under
/// `key`, and returns the fact.
fn keep<T>(
    found: &mut BTreeMap<&'static str, Result<Source, String>>,
    key: &'static str,
    r: Result<(T, Source), String>,
) -> Option<T> {
    found.insert(key, r.as_ref().map(|(_, s)| *s).map_err(Clone::clone));
    r.ok().map(|(v, _)| v)
}

/// Addresses of data symbols, which only `.symtab` has.
pub(crate) struct DataSymbols<'d, 'f> {
    file: &'f object::File<'d>,
    stripped: bool,
}

impl<'d, 'f> DataSymbols<'d, 'f> {
    pub(crate) fn new(file: &'f object::File<'d>) -> Self {
        Self {
            file,
            stripped: file.symbols().next().is_none(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<object::Symbol<'d, 'f>> {
        self.file.symbol_by_name(name)
    }

    pub(crate) fn address(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_elf() {
        let script: &[u8] = b"#!/bin/sh\necho hi\n";
        let e = GoBinary::parse(Path::new("/x"), script).unwrap_err();
        assert!(matches!(e, TargetError::NotGo(_)));
    }
}
