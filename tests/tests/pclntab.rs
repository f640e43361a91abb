//! `.gopclntab` against the truth of the same build: every function symbol
//! of the unstripped fixture is found by name and by address, and inlined
//! frames come out as Go names them. Needs no privileges.

use memtrace_tests::{fixture, go_versions};
use memtrace_user::binary::gopclntab::GoTable;
use object::{Object as _, ObjectSymbol as _};

fn table(path: &std::path::Path) -> GoTable {
    let data = std::fs::read(path).unwrap();
    GoTable::parse(data).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A name up to its first `[`; Go 1.23 writes `·` where `.symtab` has `.`.
fn head(n: &str) -> String {
    n.split('[').next().unwrap_or(n).replace('·', ".")
}

#[test]
fn pclntab_agrees_with_the_symbol_table() {
    for v in go_versions() {
        let path = fixture(&v, "allocs");
        let data = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let t = table(&path);
        let entries: std::collections::HashSet<(String, u64)> =
            t.functions().map(|f| (head(f.name), f.entry)).collect();
        let mut checked = 0;
        for sym in file.symbols() {
            let name = sym.name().unwrap_or_default();
            if sym.kind() != object::SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            // Only Go functions are in pclntab (not assembler-only helpers
            // without a pcln entry, which have none of the above anyway).
            // ABI wrappers are `F.abi0` in .symtab and plain `F` in pclntab.
            let go_name = name.strip_suffix(".abi0").unwrap_or(name);
            let Some(frames) = t.frames(sym.address()) else {
                continue;
            };
            // pclntab, like pprof, writes type and generic arguments as
            // `[...]`; the symbol table spells them out.
            assert_eq!(
                head(&frames[0]),
                head(go_name),
                "go{v}: name at {:#x}",
                sym.address()
            );
            if go_name.starts_with("main.") {
                assert_eq!(frames[0], go_name, "go{v}: name at {:#x}", sym.address());
            }
            assert!(
                entries.contains(&(head(go_name), sym.address())),
                "go{v}: entry of {name}"
            );
            checked += 1;
        }
        assert!(checked > 1000, "go{v}: only {checked} functions matched");
        for must in ["runtime.mallocgc", "main.allocateRecords", "main.main"] {
            assert!(t.function(must).is_some(), "go{v}: no {must}");
        }
        assert!(t.has_inline_info(), "go{v}: inline trees not found");
    }
}

#[test]
fn stripped_and_pie_builds_have_the_same_functions() {
    for v in go_versions() {
        let plain = table(&fixture(&v, "allocs"));
        let names = |t: &GoTable| {
            let mut n: Vec<String> = t
                .functions()
                .map(|f| f.name.to_string())
                .filter(|n| n.starts_with("main."))
                .collect();
            n.sort();
            n
        };
        for variant in ["allocs-stripped", "allocs-pie", "allocs-cgo"] {
            let other = table(&fixture(&v, variant));
            assert_eq!(names(&plain), names(&other), "go{v}: {variant}");
            assert!(other.has_inline_info(), "go{v}: {variant}: no inline trees");
        }
    }
}

#[test]
fn inlined_frames_are_named() {
    for v in go_versions() {
        for variant in ["allocs", "allocs-stripped", "allocs-pie", "allocs-cgo"] {
            let t = table(&fixture(&v, variant));
            // newPoint is inlined: it has no function of its own...
            assert!(t.function("main.newPoint").is_none(), "go{v} {variant}");
            // ...but some pc of allocateInlined is inside it.
            let f = t.function("main.allocateInlined").unwrap();
            let inlined = (f.entry..f.end).any(|pc| {
                t.frames(pc).is_some_and(|fr| {
                    fr == [
                        "main.allocateInlined".to_string(),
                        "main.newPoint".to_string(),
                    ]
                })
            });
            assert!(inlined, "go{v} {variant}: no pc names main.newPoint");
        }
    }
}
