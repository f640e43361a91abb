//! alloc-exact counts bytes as the runtime accounts them (size classes,
//! malloc headers from Go 1.22, whole pages for large objects), so its
//! totals are the program's own `TotalAlloc` and `Mallocs`, and the
//! requested bytes stay available beside them. Checked on random sizes,
//! pointerful and pointer-free, from 8 goroutines, against the program's
//! `runtime.MemStats` and against the alloc lens at `--memprofile-rate 1`
//! recorded in the same window.

use memtrace_tests::*;

const RANDOM: &str = "200000";

#[test]
fn alloc_exact_bytes_are_what_the_runtime_accounts() {
    for v in go_versions() {
        let r = Record::new(&format!("accounting-{v}"))
            .lens("alloc-exact,alloc")
            .arg("--memprofile-rate")
            .arg("1")
            .launch(
                &fixture(&v, "allocs"),
                &[
                    "-objects", "0", "-maps", "0", "-inlined", "0", "-random", RANDOM,
                ],
            )
            .ok();
        let lenses = &r.summary["lenses"];
        let exact = &lenses["alloc-exact"];
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
        let (bytes, objects) = (num(exact, "total"), num(exact, "objects"));
        // The program reads its MemStats before it prints them: what it
        // allocates after (a few small objects) is not in them.
        let total_alloc = r.printed("total_alloc_total") as f64;
        let mallocs = r.printed("mallocs_total") as f64;
        assert!(
            (bytes / total_alloc - 1.0).abs() <= 0.01,
            "go{v}: {bytes} bytes vs TotalAlloc {total_alloc}"
        );
        assert!(
            (objects / mallocs - 1.0).abs() <= 0.005,
            "go{v}: {objects} objects vs Mallocs {mallocs}"
        );
        // Rounding matters here: the bytes asked for are well below.
        let requested = num(exact, "requested_bytes");
        assert!(
            requested < bytes * 0.97 && requested > bytes * 0.8,
            "go{v}: requested {requested} of {bytes}"
        );
        assert_eq!(exact["unknown_types"], 0, "go{v}");
        // The runtime's own profiler at rate 1, same window: the same bytes
        // (it counts tiny allocations per 16-byte block, so fewer objects).
        let sampled = &lenses["alloc"];
        assert!(
            (num(sampled, "total") / bytes - 1.0).abs() <= 0.01,
            "go{v}: alloc {} vs alloc-exact {bytes}",
            num(sampled, "total")
        );
        assert!(num(sampled, "objects") <= objects, "go{v}");
        // pprof: space (accounted) is the default; requested_space beside it.
        let gz = std::fs::read(r.out.join("alloc-exact.pb.gz")).unwrap();
        let pb = memtrace_user::render::pprof::decode(&gz).unwrap();
        let s = |i: i64| pb.string_table[i as usize].as_str();
        let types: Vec<&str> = pb.sample_type.iter().map(|t| s(t.r#type)).collect();
        assert_eq!(types, ["objects", "space", "requested_space"], "go{v}");
        let sum = |i: usize| pb.sample.iter().map(|x| x.value[i]).sum::<i64>() as f64;
        assert_eq!((sum(1), sum(2)), (bytes, requested), "go{v}");
    }
}

/// memtrace's size-class table is each toolchain's own.
#[test]
fn the_size_classes_are_each_toolchains() {
    use memtrace_user::lens::sizeclass::CLASS_TO_SIZE;
    use object::{Object as _, ObjectSymbol as _};
    for v in go_versions() {
        let path = fixture(&v, "allocs");
        let data = std::fs::read(&path).unwrap();
        let file = object::File::parse(&*data).unwrap();
        // `internal/runtime/gc.SizeClassToSize` from Go 1.25.
        let sym = file
            .symbols()
            .find(|s| {
                s.name() == Ok("runtime.class_to_size")
                    || s.name() == Ok("internal/runtime/gc.SizeClassToSize")
            })
            .unwrap_or_else(|| panic!("go{v}: no size class table"));
        assert_eq!(sym.size(), 2 * CLASS_TO_SIZE.len() as u64, "go{v}");
        let table = memtrace_user::binary::gopclntab::GoTable::parse(data.clone()).unwrap();
        let bytes = table
            .bytes_at(sym.address(), 2 * CLASS_TO_SIZE.len())
            .unwrap();
        let theirs: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(theirs, CLASS_TO_SIZE, "go{v}");
    }
}

/// Under a production-shaped load (tests/fixtures/prodlike: an HTTP server
/// and 256 keep-alive clients, ~770 goroutines on every CPU, random sizes,
/// JSON, cgo calls, timers, a loop only SIGURG preemption stops, the GC
/// running throughout), alloc-exact's objects and bytes are the program's
/// own Mallocs and TotalAlloc, with nothing dropped.
#[test]
fn alloc_exact_holds_under_a_production_shaped_load() {
    for v in go_versions() {
        let r = Record::new(&format!("prodlike-{v}"))
            .lens("alloc-exact")
            .launch(&fixture(&v, "prodlike"), &["-requests", "5000"])
            .ok();
        assert!(r.printed("goroutines") >= 500, "go{v}: a busy service");
        assert!(r.printed("gc_cycles") >= 5, "go{v}: the GC ran");
        let exact = &r.summary["lenses"]["alloc-exact"];
        let (bytes, objects) = (
            exact["total"].as_f64().unwrap(),
            exact["objects"].as_f64().unwrap(),
        );
        let total_alloc = r.printed("total_alloc_total") as f64;
        let mallocs = r.printed("mallocs_total") as f64;
        assert!(
            (objects / mallocs - 1.0).abs() <= 0.005,
            "go{v}: {objects} objects vs Mallocs {mallocs}"
        );
        assert!(
            (bytes / total_alloc - 1.0).abs() <= 0.01,
            "go{v}: {bytes} bytes vs TotalAlloc {total_alloc}"
        );
        assert_eq!(r.summary["dropped_events"], 0, "go{v}");
        assert_eq!(r.summary["counters"]["kernel_misses"], 0, "go{v}");
        assert_eq!(exact["unknown_types"], 0, "go{v}");
    }
}
