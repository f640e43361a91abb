//! What the fuzz targets (`fuzz/`, run by cargo-fuzz) feed untrusted bytes
//! to, one function per kind of input the agent or the CLI reads from
//! outside: Go executables (ELF, build info, `.gopclntab` of every format,
//! moduledata, inline trees, DWARF), `/proc` files, the kubelet's pod list,
//! pprof profiles (`memtrace diff`) and the runtime's structures in a
//! target's memory. Each must return, whatever the
//! bytes: no panic, no endless loop. The regression inputs under
//! `fuzz/regressions/` go through the same functions in the tests.

use std::path::Path;

/// A Go executable: everything `GoBinary::parse` reads, then symbolization
/// of pcs across its text (line tables and inline trees).
pub fn go_binary(data: &[u8]) {
    let _ = crate::binary::goruntime::parse_buildinfo(data);
    let _ = crate::binary::gtypes::g_layout(data);
    let Ok(bin) = crate::binary::goruntime::GoBinary::parse(Path::new("fuzz"), data) else {
        return;
    };
    let table = &bin.table;
    // Every function is walked (a table that never ends must be caught),
    // and pcs spread over all of them are symbolized, a bounded number.
    let count = table.functions().count();
    let stride = count.div_ceil(256).max(1);
    let mut pcs: Vec<u64> = table
        .functions()
        .step_by(stride)
        .flat_map(|f| {
            [
                f.entry,
                f.entry + (f.end.saturating_sub(f.entry)) / 2,
                f.end,
            ]
        })
        .collect();
    if let Some((lo, hi, _)) = table.text_segment() {
        pcs.extend([lo, hi, lo.wrapping_add(1), hi.wrapping_sub(1)]);
    }
    pcs.extend([0, u64::MAX, 1 << 40]);
    for pc in pcs {
        let _ = table.covers(pc);
        let _ = table.locate(pc);
        let _ = table.frames(pc);
    }
    let _ = crate::front::doctor::lens_support(&bin, true);
    let _ = crate::front::doctor::allocators(&bin);
}

/// `.go.buildinfo` alone.
pub fn buildinfo(data: &[u8]) {
    let _ = crate::binary::goruntime::parse_buildinfo(data);
}

/// The `/proc` texts memtrace parses: maps, smaps, status, cgroup,
/// net/tcp.
pub fn procfs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let maps = crate::host::procfs::parse_maps(&text);
    for m in &maps {
        let _ = m.contains(m.start);
    }
    let _ = crate::host::breakdown::from_smaps(
        &text,
        u64::from(data.first().copied().unwrap_or(0)) << 20,
    );
    let _ = crate::host::procfs::parse_status(&text);
    let _ = crate::host::procfs::parse_cap_eff(&text);
    let _ = crate::host::cgroup::path_from_proc(&text);
    let _ = crate::host::procfs::parse_listening(&text);
    let _ = crate::host::procfs::parse_state(&text);
}

/// The kubelet's `/pods` answer.
pub fn kubelet(data: &[u8]) {
    if let Ok(pods) = crate::front::agent::pods::parse_pods(data) {
        for p in pods.values() {
            let _ = p.app();
        }
    }
}

/// A pprof profile, gzipped or not (`memtrace diff` reads users' files).
pub fn pprof(data: &[u8]) {
    if let Ok(p) = crate::render::pprof::decode(data) {
        let _ = crate::render::pprof::folded(&p, crate::model::profile::FrameMode::Func);
        let _ = crate::render::pprof::folded(&p, crate::model::profile::FrameMode::Line);
    }
}

/// Where [`go_memory`] places its input in the fake target memory.
pub const MEMORY_BASE: u64 = 0x1000;

/// A target's memory, as the agent reads it through `/proc/PID/mem`: the
/// input is mapped at [`MEMORY_BASE`], and the memory profile's bucket
/// list (`runtime.mbuckets`, both layouts), a `g.labels` set (both
/// formats) and `runtime.allgs` are read from its start, following
/// whatever pointers it holds.
pub fn go_memory(data: &[u8]) {
    use crate::binary::labels::{self, Format};
    let mem = crate::host::remote::FakeMemory::default();
    mem.map(MEMORY_BASE, data.to_vec());
    for words in [2, 4] {
        let _ = crate::binary::memprof::read_buckets(&mem, MEMORY_BASE, words);
    }
    for format in [Format::Map, Format::Slice] {
        let _ = labels::read(&mem, MEMORY_BASE, format);
        let _ = format.check(&mem, MEMORY_BASE);
    }
    let _ = crate::lens::goroutines::each_g(&mem, MEMORY_BASE, |g| {
        let _ = crate::host::remote::RemoteMemory::read_u32(&mem, g);
    });
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, for the regression runner.
pub const TARGETS: &[(&str, Target)] = &[
    ("go_binary", go_binary),
    ("buildinfo", buildinfo),
    ("procfs", procfs),
    ("kubelet", kubelet),
    ("pprof", pprof),
    ("go_memory", go_memory),
];
