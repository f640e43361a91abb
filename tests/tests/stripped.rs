//! What memtrace finds in a stripped binary, held against the truth of the
//! same build with its symbols and DWARF: each runtime variable located
//! from code is the symbol's address, the `runtime.g` layout read from the
//! runtime's type descriptor is DWARF's, and the table of
//! `runtime.gcControllerState` offsets is DWARF's, for every Go version
//! built (`--all-go`: the whole matrix). And the stripped build parses to
//! the same addresses as the unstripped one. Needs no privileges.

use memtrace_tests::{fixture, go_versions};
use memtrace_user::binary::goruntime::vars::{self, Source};
use memtrace_user::binary::goruntime::{GoBinary, GC_LAYOUT, G_LAYOUT};
use memtrace_user::binary::gtypes::{self, GcFields};
use object::{Object as _, ObjectSymbol as _};

const RULES: [vars::Rule; 4] = [
    vars::MBUCKETS,
    vars::MEM_PROFILE_RATE,
    vars::ALLGS,
    vars::GC_CONTROLLER,
];

fn minor(v: &str) -> u32 {
    v.split('.').nth(1).unwrap().parse().unwrap()
}

#[test]
fn variables_found_in_code_are_the_symbols() {
    for v in go_versions() {
        // PIE and cgo builds place data differently; each must agree.
        for name in ["allocs", "allocs-pie", "allocs-cgo", "goroutines"] {
            let path = fixture(&v, name);
            let data = std::fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let bin = GoBinary::parse(&path, data.clone()).unwrap();
            let sections = vars::Sections::of(&file);
            for rule in &RULES {
                let sym = file
                    .symbols()
                    .find(|s| s.name() == Ok(rule.name))
                    .unwrap_or_else(|| panic!("go{v} {name}: no symbol {}", rule.name))
                    .address();
                let found = vars::locate(&bin.table, &sections, rule)
                    .unwrap_or_else(|e| panic!("go{v} {name}: {e}"));
                assert_eq!(found, sym, "go{v} {name}: {} from code", rule.name);
            }
        }
    }
}

#[test]
fn the_g_layout_from_the_runtime_type_is_dwarfs() {
    for v in go_versions() {
        for name in ["allocs", "allocs-pie"] {
            let path = fixture(&v, name);
            let data = std::fs::read(&path).unwrap();
            let bin = GoBinary::parse(&path, data.clone()).unwrap();
            let dwarf = gtypes::g_layout(&data).expect("DWARF g layout");
            let typed = gtypes::g_layout_from_type(&bin.table)
                .unwrap_or_else(|e| panic!("go{v} {name}: {e}"));
            assert_eq!(typed, dwarf, "go{v} {name}");
        }
    }
}

#[test]
fn the_gc_controller_table_is_dwarfs() {
    for v in go_versions() {
        let data = std::fs::read(fixture(&v, "allocs")).unwrap();
        let dwarf = GcFields::from_dwarf(&data).expect("DWARF gcControllerState");
        assert_eq!(
            GcFields::for_release(minor(&v)),
            Some(dwarf),
            "go{v}: the table's gcControllerState offsets"
        );
    }
}

#[test]
fn a_stripped_build_gives_the_unstripped_builds_addresses() {
    for v in go_versions() {
        let full = GoBinary::open(&fixture(&v, "allocs")).unwrap();
        let stripped = GoBinary::open(&fixture(&v, "allocs-stripped")).unwrap();
        assert!(stripped.stripped && !full.stripped);
        // The linker lays data out a little differently without symbols
        // (addresses move by a few words), so the addresses themselves are
        // held against symbols above; here everything must be found.
        for (what, addr) in [
            ("mbuckets", stripped.mbuckets),
            ("MemProfileRate", stripped.mem_profile_rate),
            ("allgs", stripped.allgs),
        ] {
            assert!(
                addr.is_some(),
                "go{v}: {what} not found: {:?}",
                stripped.found
            );
        }
        assert_eq!(stripped.g_layout, full.g_layout, "go{v}");
        let (s, f) = (stripped.gc.as_ref().unwrap(), full.gc.as_ref().unwrap());
        assert!(s.heap_live.is_some(), "go{v}: heap figures");
        let rel = |g: &memtrace_user::binary::goruntime::GcPoints| {
            let live = g.heap_live.unwrap();
            (
                g.heap_goal.unwrap().wrapping_sub(live),
                g.heap_marked.unwrap().wrapping_sub(live),
            )
        };
        assert_eq!(rel(s), rel(f), "go{v}: the fields' offsets");
        for rule in &RULES {
            assert_eq!(stripped.found[rule.name], Ok(Source::Code), "go{v}");
            assert_eq!(full.found[rule.name], Ok(Source::Symbols), "go{v}");
        }
        assert_eq!(stripped.found[G_LAYOUT], Ok(Source::RuntimeType));
        assert_eq!(stripped.found[GC_LAYOUT], Ok(Source::VersionTable));
        assert_eq!(full.found[G_LAYOUT], Ok(Source::Dwarf));
    }
}

/// The sampled lenses and the GC view on stripped and PIE-stripped builds
/// give what they give on the default build: at `--memprofile-rate 1` the
/// alloc lens counts the program's own Mallocs within 2%, with
/// `main.allocateRecords` on top with its bytes; heap names it too; and the
/// GC view has every cycle's heap size and goal.
#[test]
fn sampled_lenses_and_the_gc_view_work_on_stripped_builds() {
    const OBJECTS: u64 = 200_000;
    for v in go_versions() {
        let mut cycles = Vec::new();
        for build in ["allocs", "allocs-stripped", "allocs-pie-stripped"] {
            let what = format!("go{v} {build}");
            let r = memtrace_tests::Record::new(&format!("stripped-{v}-{build}"))
                .lens("alloc,heap")
                .arg("--memprofile-rate")
                .arg("1")
                .launch(
                    &fixture(&v, build),
                    &[
                        "-objects",
                        &OBJECTS.to_string(),
                        "-maps",
                        "0",
                        "-inlined",
                        "0",
                    ],
                )
                .ok();
            let s = &r.summary;
            let mallocs = r.printed("mallocs_total") as f64;
            let objects = s["lenses"]["alloc"]["objects"].as_u64().unwrap() as f64;
            assert!(
                (objects / mallocs - 1.0).abs() <= 0.02,
                "{what}: {objects} objects vs Mallocs {mallocs}"
            );
            for lens in ["alloc", "heap"] {
                let t = memtrace_tests::top(s, lens);
                assert_eq!(
                    t[0].0.last().map(String::as_str),
                    Some("main.allocateRecords"),
                    "{what} {lens}: {:?}",
                    t[0]
                );
            }
            let alloc_top = memtrace_tests::top(s, "alloc")[0].1 as f64;
            assert!(
                (alloc_top / (OBJECTS * 64) as f64 - 1.0).abs() <= 0.02,
                "{what}: main.allocateRecords {alloc_top} bytes"
            );
            let gc = &s["gc"];
            let detail = gc["cycle_detail"].as_array().unwrap();
            assert!(!detail.is_empty(), "{what}: no GC cycle: {gc}");
            for c in detail {
                assert!(
                    c["heap_live"].as_u64().unwrap() > 0 && c["heap_goal"].as_u64().unwrap() > 0,
                    "{what}: heap figures missing: {c}"
                );
            }
            cycles.push(gc["cycles"].as_u64().unwrap());
            // Where the addresses came from.
            let found = &s["targets"][0]["found"];
            let want = if build == "allocs" { "symbols" } else { "code" };
            assert_eq!(found["runtime.mbuckets"], want, "{what}: {found}");
        }
        // Same program, same work: the same number of GC cycles, give or
        // take one.
        let (lo, hi) = (cycles.iter().min().unwrap(), cycles.iter().max().unwrap());
        assert!(hi - lo <= 1, "go{v}: GC cycles by build {cycles:?}");
    }
}
