//! The engine's lifecycle against a fake kernel and fake processes.

use crate::model::target::Exit;
use std::path::PathBuf;
use std::sync::Arc;

use memtrace_common::{Event, EventKind, HoldPoint, StackField};

use super::*;
use crate::host::procfs::MapEntry;
use crate::kernel::decode::encode;

use super::fake::{add, engine, spec};

fn record(ev: Event, frames: &[u64]) -> Vec<u8> {
    let mut ev = ev;
    ev.stack = if frames.is_empty() {
        StackField::None.encode()
    } else {
        StackField::Frames(frames.len() as u32).encode()
    };
    encode(&ev, frames)
}

#[test]
fn the_last_process_of_a_binary_takes_its_probes_along() {
    let mut e = engine(&[Lens::Rss], true);
    add(&mut e, 10, (1, 7), "/srv/app");
    add(&mut e, 11, (1, 7), "/srv/app");
    add(&mut e, 20, (1, 8), "/srv/other");
    assert_eq!(e.kernel.attached.len(), 2, "one probe set per binary");
    assert_eq!(e.kernel.targets.len(), 3);
    e.forget(10);
    assert!(e.kernel.detached.is_empty(), "pid 11 still runs /srv/app");
    e.forget(11);
    assert_eq!(e.kernel.detached, vec![PathBuf::from("/srv/app")]);
    assert_eq!(e.kernel.live_links(), 1);
    assert_eq!(e.kernel.targets.keys().copied().collect::<Vec<_>>(), [20]);
    assert!(e.target(10).is_none());
}

#[test]
fn per_process_scope_attaches_per_process() {
    let mut e = engine(&[Lens::AllocExact], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    add(&mut e, 11, (1, 7), "/srv/app");
    assert_eq!(e.kernel.attached.len(), 2);
    assert_eq!(e.kernel.attached[0].2, crate::kernel::Scope::Process(10));
    assert!(
        e.kernel.attached[0].1.allocs,
        "alloc-exact asks for allocator probes"
    );
    assert!(
        !e.kernel.attached[0].1.gc,
        "a binary without GC points gets none"
    );
}

#[test]
fn a_target_that_exits_is_noticed_retired_and_kept_for_the_report() {
    let mut e = engine(&[Lens::Rss], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    e.kernel
        .records
        .push_back(record(Event::fault(10, 10, 0x10000, 4096), &[0x401000]));
    e.drain();
    assert!(e.tick().is_empty());
    e.host.alive.borrow_mut().remove(&10);
    assert_eq!(e.tick(), vec![10]);
    assert!(e.kernel.targets.is_empty(), "the kernel stops reporting it");
    assert_eq!(e.kernel.live_links(), 0, "its probes are detached");
    assert!(e.live_pids().is_empty());
    let r = e.report(None, crate::model::ended::EndedBy::EveryTargetExited);
    assert_eq!(r.summary.lenses["rss"].total, 4096, "its data stays");
    assert_eq!(r.summary.targets[0].exit, Some(Exit::default()));
}

#[test]
fn runs_still_in_the_kernel_are_counted_at_the_report_and_dropped_with_their_target() {
    let mut e = engine(&[Lens::Rss], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    let mut first = Event::fault(10, 10, 0x10000, 4096);
    first.stack_ref = 5;
    e.kernel.records.push_back(record(first, &[0x401000]));
    e.drain();
    let run = memtrace_common::FaultRun {
        tgid: 10,
        tid: 10,
        first: 0x10000,
        stride: 4096,
        count: 3,
        stack_ref: 5,
        start_ns: 1,
        ..Default::default()
    };
    let so_far = Event::fault_run(EventKind::FaultRunSoFar, &run);
    e.kernel.runs.push((10, encode(&so_far, &[])));
    let r = e.report(None, crate::model::ended::EndedBy::Duration);
    assert_eq!(
        r.summary.lenses["rss"].total,
        4 * 4096,
        "the first page and three merged"
    );
    e.host.alive.borrow_mut().remove(&10);
    assert_eq!(e.tick(), vec![10]);
    assert!(
        e.kernel.runs.is_empty(),
        "a retired target's runs leave the kernel"
    );
    let r = e.report(None, crate::model::ended::EndedBy::EveryTargetExited);
    assert_eq!(
        r.summary.lenses["rss"].total,
        4 * 4096,
        "and are not counted twice"
    );
}

#[test]
fn a_window_rotation_restarts_rss_and_keeps_live_goroutines() {
    let mut e = engine(&[Lens::Rss, Lens::Goroutines], true);
    add(&mut e, 10, (1, 7), "/srv/app");
    let create = record(Event::go_create(10, 3, 0x4444), &[0x401000]);
    let created = record(Event::goroutine(EventKind::GoCreated, 10, 3, 0xc000), &[]);
    for r in [
        record(Event::fault(10, 10, 0x10000, 4096), &[0x401000]),
        create,
        created,
    ] {
        e.kernel.records.push_back(r);
    }
    e.drain();
    let first = e.report(Some(&[10]), crate::model::ended::EndedBy::Window);
    assert_eq!(first.summary.lenses["rss"].total, 4096);
    assert_eq!(first.summary.lenses["goroutines"].total, 1);
    e.rotate();
    let second = e.report(Some(&[10]), crate::model::ended::EndedBy::Window);
    assert_eq!(second.summary.lenses["rss"].total, 0, "rss is per window");
    assert_eq!(
        second.summary.lenses["goroutines"].total, 1,
        "live ones carry over"
    );
}

#[test]
fn drops_and_undecodable_records_are_counted() {
    let mut e = engine(&[Lens::Mmap], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    e.kernel.counters.ringbuf_drops = 7;
    e.kernel.counters.kernel_misses = 3;
    e.kernel.counters.stack_errors = 2;
    e.kernel.records.push_back(vec![1, 2, 3]);
    e.drain();
    let r = e.report(None, crate::model::ended::EndedBy::Duration);
    assert_eq!(
        r.summary.dropped_events, 10,
        "the ring buffer's and the kernel's"
    );
    assert_eq!(r.summary.counters.ringbuf_drops, 7);
    assert_eq!(r.summary.counters.kernel_misses, 3);
    assert_eq!(
        crate::cli::drops(&r.summary.counters),
        "10 events were dropped: 7 (ring buffer full), 3 (probe runs the kernel \
         skipped: another BPF program was running on that CPU); totals are low by \
         that many events"
    );
    assert_eq!(r.summary.counters.stack_errors, 2);
    assert_eq!(r.summary.counters.decode_errors, 1);
}

#[test]
fn a_held_target_is_read_and_continued_with_its_exit_code() {
    let mut e = engine(&[Lens::Rss], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    e.host.rss.borrow_mut().insert(10, 8 << 20);
    let hold = Event::hold(10, 10, HoldPoint::Exit, 3, true);
    e.kernel.records.push_back(record(hold, &[]));
    assert!(e.drain().is_empty());
    assert_eq!(*e.host.resumed.borrow(), vec![10], "continued at once");
    assert!(e.target(10).unwrap().exit.is_none(), "still running");
    e.host.alive.borrow_mut().remove(&10);
    e.tick();
    let t = e.target(10).unwrap();
    assert_eq!(t.exit.and_then(|x| x.code), Some(3));
    assert_eq!(
        t.timeline.last().map(|p| p.vm_rss),
        Some(8 << 20),
        "last RSS read at the hold"
    );
    // A hold from a process that is not (or no longer) a target is still
    // continued.
    e.kernel
        .records
        .push_back(record(Event::hold(99, 99, HoldPoint::Start, 0, true), &[]));
    e.drain();
    assert_eq!(*e.host.resumed.borrow(), vec![10, 99]);
}

#[test]
fn lifecycle_events_reach_the_policy() {
    let mut e = engine(&[Lens::Rss], true);
    add(&mut e, 10, (1, 7), "/srv/app");
    e.kernel
        .records
        .push_back(record(Event::new(EventKind::ProcExec, 42, 42), &[]));
    e.kernel
        .records
        .push_back(record(Event::new(EventKind::ProcExit, 10, 10), &[]));
    assert_eq!(e.drain(), vec![Lifecycle::Exec(42), Lifecycle::Exit(10)]);
}

/// A launched PIE binary's runtime addresses are unknown until it runs
/// its program: the GC view's heap addresses go to the kernel as 0, then,
/// once its maps appear, relocated to where it was loaded.
#[test]
fn a_launched_pie_targets_heap_addresses_are_completed_once_it_runs() {
    use crate::binary::goruntime::{GcPoints, ProbePoint};
    let point = ProbePoint {
        symbol: "runtime.gcMarkTermination".into(),
        vaddr: 0x1000,
        file_offset: 0x1000,
        cookie: 0,
    };
    let mut bin = GoBinary::for_tests("/srv/pie");
    bin.pie = true;
    bin.gc = Ok(GcPoints {
        mark_termination: point.clone(),
        stw_stop: point.clone(),
        stw_start: point,
        heap_live: Some(0x5_0068),
        heap_goal: Some(0x5_0048),
        heap_marked: Some(0x5_0098),
    });
    let mut e = engine(&[Lens::Rss], false);
    e.host.alive.borrow_mut().insert(7);
    let mut s = spec(7, (1, 1), "/srv/pie");
    s.bin = Arc::new(bin);
    s.launched = true;
    e.add(s).unwrap();
    assert_eq!(e.kernel.targets[&7].heap_live, 0, "not loaded yet");
    let base = 0x5555_5555_0000;
    e.host.maps.borrow_mut().insert(
        7,
        (
            "/srv/pie".into(),
            vec![MapEntry {
                start: base,
                end: base + 0x10_0000,
                perms: "r-xp".into(),
                offset: 0,
                path: Some("/srv/pie".into()),
            }],
        ),
    );
    e.drain();
    let c = e.kernel.targets[&7];
    assert_eq!(
        (c.heap_live, c.heap_goal, c.heap_marked),
        (base + 0x5_0068, base + 0x5_0048, base + 0x5_0098)
    );
}

#[test]
fn a_target_left_stopped_at_a_hold_is_continued_by_the_watchdog() {
    let mut e = engine(&[Lens::Rss], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    add(&mut e, 11, (1, 8), "/srv/other");
    let now = crate::host::clock::monotonic_ns();
    // 10 was stopped 6 s ago and its event never came; 11 just now, its
    // event still on its way; 12 is not running any more.
    e.kernel.held.insert(10, now - 6_000_000_000);
    e.kernel.held.insert(11, now - 1_000_000);
    e.kernel.held.insert(12, now - 9_000_000_000);
    assert_eq!(e.continue_stranded(), vec![10]);
    assert_eq!(*e.host.resumed.borrow(), vec![10]);
    assert_eq!(e.kernel.held.keys().copied().collect::<Vec<_>>(), vec![11]);
    // 11's event arrives: served, continued, and no longer noted.
    e.kernel
        .records
        .push_back(record(Event::hold(11, 11, HoldPoint::Start, 0, true), &[]));
    e.drain();
    assert_eq!(*e.host.resumed.borrow(), vec![10, 11]);
    assert!(e.kernel.held.is_empty());
    assert!(e.continue_stranded().is_empty());
}

#[test]
fn failed_stack_walks_are_counted_by_errno_and_named_in_the_graph() {
    let mut e = engine(&[Lens::Rss], false);
    add(&mut e, 10, (1, 7), "/srv/app");
    for (page, errno) in [(0x10000, 14), (0x11000, 14), (0x12000, 61)] {
        let mut ev = Event::fault(10, 10, page, 4096);
        ev.stack = StackField::Error(errno).encode();
        e.kernel.records.push_back(encode(&ev, &[]));
    }
    e.drain();
    let r = e.report(None, crate::model::ended::EndedBy::Duration);
    let why: Vec<(u32, &str, u64)> = r
        .summary
        .counters
        .stack_error_reasons
        .iter()
        .map(|s| (s.errno, s.reason, s.events))
        .collect();
    assert_eq!(
        why,
        vec![(14, "user stack unreadable", 2), (61, "no user frames", 1)]
    );
    let top = &r.summary.lenses["rss"].top[0];
    assert!(
        top.stack
            .iter()
            .any(|f| f.contains("user stack unreadable")),
        "{:?}",
        top.stack
    );
}
