//! Unit tests of the shared layout and encodings.

use super::*;

#[test]
fn verification_walks_thin_out() {
    let want = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024];
    let mut seen = 0;
    for n in 0..=1024u64 {
        if verify_on_use(n) {
            assert_eq!(n, want[seen], "walk {seen}");
            seen += 1;
        }
    }
    assert_eq!(seen, want.len());
}

#[test]
fn spawn_cookie_round_trips() {
    for c in [
        SpawnCookie {
            startpc: 0x128,
            gopc: 0x120,
            at_runqput: true,
        },
        SpawnCookie {
            startpc: 0x128,
            gopc: 0,
            at_runqput: false,
        },
        SpawnCookie {
            startpc: u32::MAX,
            gopc: 0x7fff_ffff,
            at_runqput: true,
        },
    ] {
        assert_eq!(SpawnCookie::decode(c.encode()), c);
    }
    assert_eq!(SpawnCookie::decode(0x128).gopc, 0);
}

#[test]
fn kind_round_trips() {
    for v in 1..=25 {
        assert_eq!(EventKind::from_u32(v).map(|k| k as u32), Some(v));
    }
    assert_eq!(EventKind::from_u32(0), None);
    assert_eq!(EventKind::from_u32(26), None);
}

#[test]
fn stack_field_round_trips() {
    for f in [
        StackField::Frames(1),
        StackField::Frames(127),
        StackField::Ref,
        StackField::None,
        StackField::Error(14),
    ] {
        assert_eq!(StackField::decode(f.encode()), f);
    }
}

#[test]
fn constructors_and_accessors_agree() {
    let m = Event::mmap_enter(1, 2, 8192, 3, 0x22);
    assert_eq!((m.size, m.prot(), m.map_flags()), (8192, 3, 0x22));
    assert_eq!(Event::madvise(1, 2, 0x1000, 4096, 4).advice(), 4);
    assert_eq!(Event::mremap_enter(1, 2, 0x1000, 1, 9).new_len(), 9);
    assert_eq!(Event::go_create(1, 2, 0x4010).start_pc(), 0x4010);
    let gc = Event::gc_cycle(1, 2, 5, 10, 3);
    assert_eq!((gc.heap(), gc.heap_marked()), ((5, 10), 3));
    let h = Event::hold(1, 2, HoldPoint::Exit, 3, true);
    assert_eq!((h.hold_point(), h.size), (Some(HoldPoint::Exit), 3));
    assert!(h.hold_stopped());
    assert_eq!(h.stack_field(), StackField::None);
}
