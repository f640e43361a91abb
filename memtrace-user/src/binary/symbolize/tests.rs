//! Unit tests of the symbolizer.
use super::*;

#[test]
fn locates_in_file_mappings() {
    let image = Image {
        exe: "/bin/app".into(),
        root: None,
        maps: Some(vec![
            MapEntry {
                start: 0x1000,
                end: 0x3000,
                perms: "r-xp".into(),
                offset: 0x400,
                path: Some("/bin/app (deleted)".into()),
            },
            MapEntry {
                start: 0x9000,
                end: 0xa000,
                perms: "rw-p".into(),
                offset: 0,
                path: None,
            },
        ]),
    };
    assert_eq!(
        locate(&image, 0x1010),
        Where::File("/bin/app".into(), 0x410)
    );
    assert_eq!(locate(&image, 0x9010), Where::Anon(0x9010));
    assert_eq!(locate(&image, 0x5), Where::Unmapped(0x5));
    let early = Image {
        maps: None,
        ..image
    };
    assert_eq!(
        locate(&early, 0x401000),
        Where::Virt("/bin/app".into(), 0x401000)
    );
}

fn v(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

/// A stack of one frame per address, from names.
fn locs(names: &[&str]) -> Vec<StackLoc> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| StackLoc {
            address: 0x1000 + i as u64,
            frames: vec![Frame::named(n)],
        })
        .collect()
}

fn names_of(stack: &[StackLoc]) -> Vec<String> {
    stack
        .iter()
        .flat_map(|l| l.frames.iter().map(|f| f.function.to_string()))
        .collect()
}

fn hide(names: &[&str]) -> Vec<String> {
    let mut s = locs(names);
    hide_allocator_leaf(&mut s);
    names_of(&s)
}

#[test]
fn hides_allocator_frames_even_inside_an_address() {
    // newobject inlined into the caller's location: only it goes.
    let mut s = locs(&["main.main", "runtime.mallocgc"]);
    s[0].frames.push(Frame {
        inlined: true,
        ..Frame::named("runtime.newobject")
    });
    hide_allocator_leaf(&mut s);
    assert_eq!(names_of(&s), v(&["main.main"]));
    assert_eq!(s[0].address, 0x1000, "the caller keeps its address");
}

#[test]
fn hides_allocator_frames() {
    let f = hide(&[
        "runtime.main",
        "main.main",
        "main.leak",
        "runtime.newobject",
        "runtime.mallocgc",
    ]);
    assert_eq!(f, v(&["runtime.main", "main.main", "main.leak"]));
    let sc = hide(&["main.main", "runtime.mallocgcSmallNoScanSC2"]);
    assert_eq!(sc, v(&["main.main"]));
    // A nested runtime allocation keeps the runtime frames that made it.
    let nested = hide(&[
        "main.leak",
        "runtime.mallocgc",
        "runtime.gcStart",
        "runtime.malg",
        "runtime.newobject",
        "runtime.mallocgc",
    ]);
    assert_eq!(
        nested,
        v(&[
            "main.leak",
            "runtime.mallocgc",
            "runtime.gcStart",
            "runtime.malg"
        ])
    );
    let only = hide(&["runtime.mallocgc"]);
    assert_eq!(only, v(&["runtime.mallocgc"]));
}

#[test]
fn files_of_another_namespace_are_found_under_its_root() {
    let root = std::env::temp_dir().join(format!("memtrace-root-{}", std::process::id()));
    std::fs::create_dir_all(root.join("opt")).unwrap();
    std::fs::write(root.join("opt/only-in-container.so"), b"x").unwrap();
    let image = Image {
        exe: "/app".into(),
        maps: None,
        root: Some(root.clone()),
    };
    let s = Symbolizer::default();
    let inside = Where::File("/opt/only-in-container.so".into(), 0x10);
    assert_eq!(
        s.rekey(&image, inside),
        Where::File(root.join("opt/only-in-container.so"), 0x10)
    );
    // A file the host has is used as is; one nowhere stays named.
    let host = Where::File("/proc/self/exe".into(), 1);
    assert_eq!(s.rekey(&image, host.clone()), host);
    let gone = Where::File("/opt/gone.so".into(), 2);
    assert_eq!(s.rekey(&image, gone.clone()), gone);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn symbolizes_this_test_binary() {
    // A real ELF with a symbol table: this test executable.
    let exe = std::env::current_exe().unwrap();
    let maps = crate::host::procfs::read_maps(std::process::id());
    assert!(maps.is_some());
    let image = Image {
        exe,
        maps,
        root: None,
    };
    let mut s = Symbolizer::default();
    let pc = marker_fn as *const () as usize as u64;
    let names = s.names(&image, &[pc]);
    assert!(names.iter().any(|n| n.contains("marker_fn")), "{names:?}");
    let loc = s.stack(&image, &[pc]);
    assert_eq!(loc[0].address, pc);
    assert!(
        loc[0]
            .frames
            .iter()
            .any(|f| f.file.ends_with("symbolize/tests.rs") && f.line > 0),
        "blazesym gives the position from DWARF: {loc:?}"
    );
    assert_eq!(s.unresolved, 0);
}

#[test]
fn stacks_end_at_the_bottom_frame_or_where_the_walk_left_the_stack() {
    let exe = std::env::current_exe().unwrap();
    let image = Image {
        exe,
        maps: crate::host::procfs::read_maps(std::process::id()),
        root: None,
    };
    let mut s = Symbolizer::default();
    let pc = marker_fn as *const () as usize as u64;
    // Past the marker: an address in no mapping, then anything.
    let names = s.names(&image, &[pc, pc + 1, 0x10, pc + 1]);
    assert_eq!(names.iter().filter(|n| n.contains("marker_fn")).count(), 2);
    assert!(!names.iter().any(|n| n.contains("[anon]")), "{names:?}");
    assert_eq!((s.truncated, s.unresolved), (1, 0));
    assert!(is_stack_bottom("runtime.goexit") && !is_stack_bottom("runtime.main"));
}

#[inline(never)]
fn marker_fn() -> u32 {
    std::hint::black_box(7)
}
