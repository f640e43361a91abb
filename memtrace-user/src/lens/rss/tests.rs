//! Unit tests of the rss lens's aggregator.

use super::*;
use crate::model::stack::Stack;

/// The stack that releases memory in these tests.
const REL: StackKey = (1, Stack::Id(99));

const RUNNER: StackKey = (1, Stack::Id(7));

/// A run of merged faults: the page after `first`, then every other
/// page, `count` of them so far.
fn run(count: u64, start_ns: u64, ended: bool) -> Run {
    Run {
        tid: 3,
        first: 0x10000,
        stride: 2 * PAGE,
        count,
        start_ns,
        ended,
    }
}

/// A run's first page, sent on its own as the kernel does.
fn first_page(r: &mut RssAgg) {
    r.now_ns = 100;
    r.fault(RUNNER, 0x10000);
}

#[test]
fn a_run_read_in_progress_then_ended_counts_each_page_once() {
    let mut r = RssAgg::new(Thp::Never);
    first_page(&mut r);
    r.fault_run(RUNNER, run(2, 100, false));
    assert_eq!(r.by_stack()[&RUNNER].bytes, 3 * PAGE);
    r.fault_run(RUNNER, run(2, 100, false)); // read again, no new page
    r.fault_run(RUNNER, run(4, 100, true));
    assert_eq!(r.by_stack()[&RUNNER].bytes, 5 * PAGE);
    assert_eq!(r.repeat_faults, 0);
    // Pages along the stride only: the ones between are not the run's.
    let p = &r.procs[&1];
    assert!(p.resident.get(0x12000).is_some() && p.resident.get(0x11000).is_none());
    assert!(p.runs_counted.is_empty(), "an ended run is forgotten");
}

#[test]
fn a_run_read_in_progress_carries_into_the_next_window() {
    let mut r = RssAgg::new(Thp::Never);
    first_page(&mut r);
    r.fault_run(RUNNER, run(3, 100, false));
    let mut next = r.next_window();
    next.fault_run(RUNNER, run(5, 100, true));
    // The window counts the two pages it saw fault, not the run's first four.
    assert_eq!(next.by_stack()[&RUNNER].bytes, 2 * PAGE);
}

#[test]
fn a_release_sent_after_a_run_began_took_its_pages_back() {
    let mut r = RssAgg::new(Thp::Never);
    first_page(&mut r);
    // Released (by another thread) after the run's start and before the
    // run's record came: its pages were resident, and are no more.
    r.now_ns = 200;
    r.madvise(REL, 0x12000, 4 * PAGE, madv::DONTNEED);
    r.fault_run(RUNNER, run(4, 100, true));
    // 0x12000 and 0x14000 released; 0x16000 and 0x18000 stay.
    assert_eq!(r.run_pages_released, 2);
    assert_eq!(r.by_stack()[&RUNNER].bytes, 3 * PAGE);
    assert_eq!(r.released_bytes, 2 * PAGE);
}

#[test]
fn a_release_before_a_run_began_leaves_its_pages() {
    let mut r = RssAgg::new(Thp::Never);
    first_page(&mut r);
    r.now_ns = 50;
    r.munmap(REL, 0x12000, 4 * PAGE);
    r.fault_run(RUNNER, run(4, 100, true));
    assert_eq!(r.run_pages_released, 0);
    assert_eq!(r.by_stack()[&RUNNER].bytes, 5 * PAGE);
}

#[test]
fn a_run_of_a_process_never_seen_is_dropped() {
    let mut r = RssAgg::new(Thp::Never);
    r.fault_run((9, Stack::Id(1)), run(4, 100, true));
    assert!(r.by_stack().is_empty() && r.procs.is_empty());
}

#[test]
fn rss_counts_first_touch_once_and_releases() {
    let mut r = RssAgg::new(Thp::Madvise);
    for p in 0..10 {
        r.fault((1, Stack::Id(5)), 0x10000 + p * PAGE + 12);
    }
    r.fault((1, Stack::Id(6)), 0x10000); // write after read: same page
    assert_eq!(r.repeat_faults, 1);
    assert_eq!(r.by_stack()[&(1, Stack::Id(5))].bytes, 10 * PAGE);
    r.madvise(REL, 0x10000, 2 * PAGE, madv::DONTNEED);
    r.madvise(REL, 0x12000, PAGE, madv::FREE); // lazy: still resident
    assert_eq!(r.by_stack()[&(1, Stack::Id(5))].bytes, 8 * PAGE);
    assert_eq!(r.released_bytes, 2 * PAGE);
    assert_eq!(r.lazy_free_bytes, PAGE);
    r.fault((1, Stack::Id(6)), 0x10000); // re-faulted after release: counts again
    assert_eq!(r.by_stack()[&(1, Stack::Id(6))].bytes, PAGE);
    r.munmap(REL, 0, 1 << 30);
    assert!(r.by_stack().is_empty());
    assert_eq!(r.released_bytes, 11 * PAGE);
}

#[test]
fn rss_thp_faults_count_two_mib() {
    let mut r = RssAgg::new(Thp::Madvise);
    let base = 0x4000_0000;
    r.madvise(REL, base, 2 * HUGE, madv::HUGEPAGE);
    r.fault((1, Stack::Id(1)), base + 5 * PAGE);
    assert_eq!(r.by_stack()[&(1, Stack::Id(1))].bytes, HUGE);
    r.fault((1, Stack::Id(1)), base + HUGE + 7);
    assert_eq!(r.by_stack()[&(1, Stack::Id(1))].bytes, 2 * HUGE);
    // Outside the madvised range: 4 KiB pages.
    r.fault((1, Stack::Id(2)), base + 2 * HUGE);
    assert_eq!(r.by_stack()[&(1, Stack::Id(2))].bytes, PAGE);
    // THP "always": any anonymous mapping that holds the whole block.
    let mut a = RssAgg::new(Thp::Always);
    a.set_anon_vmas(1, vec![(base, base + HUGE + PAGE)]);
    a.fault((1, Stack::Id(1)), base + HUGE); // block does not fit
    a.fault((1, Stack::Id(1)), base + 3);
    assert_eq!(a.by_stack()[&(1, Stack::Id(1))].bytes, PAGE + HUGE);
    assert_eq!(Thp::parse("always [madvise] never"), Thp::Madvise);
    assert_eq!(Thp::parse("[always] madvise never"), Thp::Always);
}

#[test]
fn rss_mremap_moves_and_brk_shrinks() {
    let mut r = RssAgg::new(Thp::Never);
    for p in 0..4 {
        r.fault((1, Stack::Id(1)), 0x100000 + p * PAGE);
    }
    // Move and shrink to 3 pages: one page released, three moved.
    r.mremap(REL, 0x100000, 4 * PAGE, 0x900000, 3 * PAGE);
    let moved: Vec<_> = r.procs[&1].resident.iter().collect();
    assert_eq!(
        moved,
        vec![(0x900000, 0x900000 + 3 * PAGE, (1, Stack::Id(1)))]
    );
    assert_eq!(r.released_bytes, PAGE);
    r.brk(REL, 0x600000);
    for p in 0..8 {
        r.fault((1, Stack::Id(2)), 0x5f8000 + p * PAGE);
    }
    r.brk(REL, 0x5fc000); // shrink by 4 pages
    assert_eq!(r.by_stack()[&(1, Stack::Id(2))].bytes, 4 * PAGE);
}

#[test]
fn rss_mmap_fixed_drops_old_pages() {
    let mut r = RssAgg::new(Thp::Never);
    r.fault((1, Stack::Id(1)), 0x7000);
    r.mmap(REL, 0x7000, PAGE);
    assert!(r.by_stack().is_empty());
}

#[test]
fn net_growth_subtracts_what_was_resident_before_and_released() {
    let mut r = RssAgg::new(Thp::Never);
    // 64 pages resident when the window began.
    r.set_resident_before(1, &[(0x100000, 0x100000 + 64 * PAGE)]);
    // 16 new pages stay; 8 more come and go.
    for p in 0..24 {
        r.fault((1, Stack::Id(1)), 0x900000 + p * PAGE);
    }
    r.munmap(REL, 0x900000 + 16 * PAGE, 8 * PAGE);
    // The old region is unmapped in two calls (32 pages each) and a
    // third that touches nothing resident.
    r.munmap(REL, 0x100000, 32 * PAGE);
    r.madvise(
        (1, Stack::Id(98)),
        0x100000 + 32 * PAGE,
        32 * PAGE,
        madv::DONTNEED,
    );
    r.munmap(REL, 0x100000, 64 * PAGE);
    assert_eq!(r.net_growth(&[1]), (16 * PAGE, 64 * PAGE));
    assert_eq!(r.released_bytes, 8 * PAGE, "in-window releases stay apart");
    assert_eq!(r.released_before[&REL].bytes, 32 * PAGE);
    assert_eq!(r.released_before[&(1, Stack::Id(98))].bytes, 32 * PAGE);
    // Moving pre-window pages is neither growth nor release; the tail an
    // mremap drops is a release.
    let mut m = RssAgg::new(Thp::Never);
    m.set_resident_before(1, &[(0x100000, 0x100000 + 4 * PAGE)]);
    m.mremap(REL, 0x100000, 4 * PAGE, 0x800000, 3 * PAGE);
    assert_eq!(m.net_growth(&[1]), (0, PAGE));
    m.munmap(REL, 0x800000, 3 * PAGE);
    assert_eq!(m.net_growth(&[1]), (0, 4 * PAGE));
    // A fault on a page the snapshot saw counts as growth, once.
    let mut f = RssAgg::new(Thp::Never);
    f.set_resident_before(1, &[(0x100000, 0x102000)]);
    f.fault((1, Stack::Id(1)), 0x100000);
    f.munmap(REL, 0x100000, 2 * PAGE);
    assert_eq!(f.net_growth(&[1]), (0, PAGE));
    assert_eq!(f.released_bytes, PAGE);
}

#[test]
fn a_new_window_starts_from_what_is_resident() {
    let mut r = RssAgg::new(Thp::Never);
    r.set_resident_before(1, &[(0x100000, 0x100000 + 2 * PAGE)]);
    r.fault((1, Stack::Id(1)), 0x900000);
    let mut next = r.next_window();
    assert!(next.by_stack().is_empty());
    next.munmap(REL, 0, 1 << 40);
    assert_eq!(next.net_growth(&[1]), (0, 3 * PAGE));
    assert_eq!(next.net_growth(&[2]), (0, 0), "other processes untouched");
}

/// A random address space for the run tests below: some pages resident
/// already (under two stacks), some resident before the window, THP by
/// `madvise` or for anonymous mappings, all within three 2 MiB blocks.
fn random_state(seed: u64) -> RssAgg {
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = 0x4000_0000;
    let thp = [Thp::Never, Thp::Madvise, Thp::Always][rng.usize(..3)];
    let mut r = RssAgg::new(thp);
    let page = |rng: &mut fastrand::Rng| base + rng.u64(..3 * HUGE / PAGE) * PAGE;
    r.set_anon_vmas(1, vec![(base, base + rng.u64(1..=3) * HUGE)]);
    if rng.bool() {
        let s = page(&mut rng);
        r.madvise(REL, s & !(HUGE - 1), HUGE, madv::HUGEPAGE);
    }
    for _ in 0..rng.usize(..6) {
        let s = page(&mut rng);
        r.procs
            .entry(1)
            .or_default()
            .before
            .insert(s, s + rng.u64(1..40) * PAGE, ());
    }
    for _ in 0..rng.usize(..12) {
        let key = (1, Stack::Id(rng.u32(1..3)));
        let s = page(&mut rng);
        for p in 0..rng.u64(1..30) {
            r.fault(key, s + p * PAGE);
        }
    }
    r
}

/// What each lens state is made of, to compare two of them.
fn picture(r: &RssAgg) -> impl PartialEq + std::fmt::Debug {
    let p = &r.procs[&1];
    (
        p.resident.iter().collect::<Vec<_>>(),
        p.before.iter().collect::<Vec<_>>(),
        r.repeat_faults,
        r.released_bytes,
        r.run_pages_released,
    )
}

#[test]
fn a_run_counts_as_its_pages_one_by_one() {
    for seed in 0..3000 {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let pages = rng.u64(1..4);
        let first = 0x4000_0000 + rng.u64(..3 * HUGE / PAGE) * PAGE;
        let count = rng.u64(1..1200 / pages);
        let done = if rng.u8(..4) == 0 {
            rng.u64(..count)
        } else {
            0
        };
        let stride = if rng.bool() {
            (pages * PAGE).wrapping_neg()
        } else {
            pages * PAGE
        };
        let run = Run {
            tid: 3,
            first,
            stride,
            count,
            start_ns: 100,
            ended: true,
        };
        let mut bulk = random_state(seed);
        let mut each = random_state(seed);
        bulk.procs
            .get_mut(&1)
            .unwrap()
            .runs_counted
            .insert((3, 100), done);
        bulk.fault_run(RUNNER, run);
        for page in FaultRun::pages(first, stride, count).skip(done as usize) {
            each.fault(RUNNER, page);
        }
        assert_eq!(
            picture(&bulk),
            picture(&each),
            "seed {seed}: {run:?}, {done} done"
        );
    }
}

#[test]
fn a_run_with_a_later_release_in_its_range_skips_the_released_pages() {
    let mut r = RssAgg::new(Thp::Never);
    first_page(&mut r);
    r.now_ns = 200;
    r.munmap(REL, 0x13000, PAGE);
    let adjacent = Run {
        stride: PAGE,
        ..run(5, 100, true)
    };
    r.fault_run(RUNNER, adjacent);
    assert_eq!(r.run_pages_released, 1);
    assert_eq!(r.by_stack()[&RUNNER].bytes, 5 * PAGE);
    assert!(r.procs[&1].resident.get(0x13000).is_none());
}

#[test]
fn the_whole_trace_keeps_every_windows_pages_until_released() {
    let (a, b) = ((1, Stack::Id(1)), (1, Stack::Id(2)));
    let mut r = RssAgg::new(Thp::Never);
    // Resident before tracing: 4 pages at 0x100000.
    r.set_resident_before(1, &[(0x100000, 0x100000 + 4 * PAGE)]);
    for i in 0..10 {
        r.fault(a, 0x200000 + i * PAGE);
    }
    let mut r = r.next_window();
    for i in 0..5 {
        r.fault(b, 0x300000 + i * PAGE);
    }
    // The window holds b's growth only; the whole trace holds both.
    assert_eq!(r.by_stack().get(&a), None);
    assert_eq!(r.by_stack()[&b].bytes, 5 * PAGE);
    let life = r.life_by_stack();
    assert_eq!((life[&a].bytes, life[&b].bytes), (10 * PAGE, 5 * PAGE));
    assert_eq!(r.resident_before_tracing(1), 4 * PAGE);
    // Releases leave the whole trace too, in any window; a page of an
    // earlier window faulted again counts once, for its new stack.
    r.munmap(REL, 0x200000, 4 * PAGE);
    r.munmap(REL, 0x100000, PAGE);
    r.fault(b, 0x200000 + 9 * PAGE);
    let mut r = r.next_window();
    r.fault(a, 0x100000 + PAGE);
    let life = r.life_by_stack();
    assert_eq!((life[&a].bytes, life[&b].bytes), (6 * PAGE, 6 * PAGE));
    assert_eq!(life.values().map(|c| c.bytes).sum::<u64>(), 12 * PAGE);
    assert_eq!(r.resident_before_tracing(1), 2 * PAGE);
}
