//! End-to-end test of the kernel's stack cache: stacks that share a
//! fingerprint (the same top ten frames) but differ deeper down are told
//! apart, not merged under whichever was walked first.

use memtrace_tests::*;

/// rootA allocates 64 B and rootB 56 B through the same eight-deep chain,
/// alternating: every allocation under rootA must be 64 B and every one
/// under rootB 56 B, with the counts the fixture made, and the kernel must
/// have counted the collision it resolved.
#[test]
fn stacks_that_differ_below_the_fingerprint_are_not_merged() {
    const N: u64 = 20_000;
    for v in go_versions() {
        let r = Record::new(&format!("stackcache-{v}"))
            .lens("alloc-exact")
            .launch(&fixture(&v, "deepstacks"), &["-n", &N.to_string()])
            .ok();
        let (want_a, want_b) = (r.printed("rootA"), r.printed("rootB"));
        let mut got = [(0u64, 0u64); 2];
        for e in r.summary["lenses"]["alloc-exact"]["top"]
            .as_array()
            .unwrap()
        {
            let stack: Vec<&str> = e["stack"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|f| f.as_str())
                .collect();
            let i = match (stack.contains(&"main.rootA"), stack.contains(&"main.rootB")) {
                (true, false) => 0,
                (false, true) => 1,
                _ => continue,
            };
            got[i].0 += e["objects"].as_u64().unwrap();
            // The bytes asked for: 56 B take the 64-byte class, as the
            // runtime accounts them.
            got[i].1 += e["requested"].as_u64().unwrap();
        }
        assert_eq!(
            got,
            [(want_a, 64 * want_a), (want_b, 56 * want_b)],
            "go{v}: (objects, bytes) under rootA and rootB"
        );
        let c = &r.summary["counters"];
        assert!(
            c["fingerprint_collisions"].as_u64().unwrap() >= 1,
            "go{v}: the shared fingerprint was never found out: {c}"
        );
        assert!(
            c["stack_reuses"].as_u64().unwrap() > 0,
            "go{v}: the cache was not used at all: {c}"
        );
        assert_no_memtrace_programs();
    }
}
