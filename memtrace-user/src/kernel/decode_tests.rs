//! Tests of the resolver: records in, ops out.

use super::*;
use memtrace_common::AllocType;

fn with_stack(mut ev: Event, stack: StackField, stack_ref: u64) -> Event {
    ev.stack = stack.encode();
    ev.stack_ref = stack_ref;
    ev
}

#[test]
fn a_run_read_before_its_first_page_arrived_waits() {
    let run = memtrace_common::FaultRun {
        tgid: 7,
        tid: 8,
        first: 0x7000,
        stride: 4096,
        count: 3,
        stack_ref: 5,
        start_ns: 11,
        ..Default::default()
    };
    let mut r = Resolver::default();
    let so_far = Event::fault_run(EventKind::FaultRunSoFar, &run);
    assert_eq!(r.feed(&encode(&so_far, &[])), None);
    assert_eq!(r.lost_stacks, 0, "not lost: read again later");
    // The first page defines the reference; then the run resolves.
    let first = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(1), 5);
    let f = r.feed(&encode(&first, &[0x401000])).unwrap();
    let ended = Event::fault_run(EventKind::FaultRun, &run);
    let got = r.feed(&encode(&ended, &[])).unwrap();
    assert_eq!(got.key, f.key);
    assert_eq!(
        got.op,
        Op::FaultRun(Run {
            tid: 8,
            first: 0x7000,
            stride: 4096,
            count: 3,
            start_ns: 11,
            ended: true,
        })
    );
}

#[test]
fn an_ephemeral_reference_lasts_until_its_last_run_ends() {
    let eph = memtrace_common::EPHEMERAL_REF | (1 << 48) | 3;
    let mut run = memtrace_common::FaultRun {
        tgid: 7,
        tid: 8,
        first: 0x7000,
        stride: 4096,
        count: 2,
        stack_ref: eph,
        start_ns: 11,
        ..Default::default()
    };
    let mut r = Resolver::default();
    let first = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(1), eph);
    let f = r.feed(&encode(&first, &[0x401000])).unwrap();
    // Continued: the next run goes on under the same reference.
    let continued = Event::fault_run(EventKind::FaultRunContinued, &run);
    let got = r.feed(&encode(&continued, &[])).unwrap();
    assert_eq!(got.key, f.key);
    assert!(matches!(got.op, Op::FaultRun(Run { ended: true, .. })));
    (run.first, run.start_ns, run.count) = (0x9000, 12, 1);
    let so_far = Event::fault_run(EventKind::FaultRunSoFar, &run);
    assert_eq!(r.feed(&encode(&so_far, &[])).unwrap().key, f.key);
    // The last run ends: the reference goes.
    let last = Event::fault_run(EventKind::FaultRun, &run);
    assert_eq!(r.feed(&encode(&last, &[])).unwrap().key, f.key);
    assert!(!r.refs.contains_key(&eph));
    assert_eq!(r.feed(&encode(&so_far, &[])), None, "a stale read waits");
    assert_eq!(r.lost_stacks, 0);
    // A shared reference stays.
    let shared = with_stack(Event::fault(7, 8, 0x20000, 4096), StackField::Frames(1), 9);
    r.feed(&encode(&shared, &[0x402000])).unwrap();
    (run.stack_ref, run.start_ns) = (9, 13);
    r.feed(&encode(&Event::fault_run(EventKind::FaultRun, &run), &[]))
        .unwrap();
    assert!(r.refs.contains_key(&9));
}

#[test]
fn round_trip_with_frames() {
    let e = with_stack(Event::fault(7, 8, 0x7000, 4096), StackField::Frames(2), 0);
    let (k, d, f) = decode(&encode(&e, &[0x401000, 0x402000])).unwrap();
    assert_eq!(k, EventKind::Fault);
    assert_eq!(d, e);
    assert_eq!(f, vec![0x401000, 0x402000]);
}

#[test]
fn rejects_bad_records() {
    assert_eq!(
        decode(&[0; 8]),
        Err(DecodeError::Short {
            got: 8,
            want: EVENT_SIZE
        })
    );
    let mut b = encode(&Event::alloc(7, 1, 1, AllocType::Scan), &[]);
    b[0] = 99;
    assert_eq!(decode(&b), Err(DecodeError::Kind(99)));
    let truncated = encode(
        &with_stack(
            Event::alloc(7, 1, 1, AllocType::Scan),
            StackField::Frames(3),
            0,
        ),
        &[1, 2],
    );
    assert!(matches!(decode(&truncated), Err(DecodeError::Short { .. })));
    let mut r = Resolver::default();
    assert_eq!(r.feed(&truncated), None);
    assert_eq!(r.decode_errors, 1, "bad records are counted");
}

#[test]
fn interns_and_reuses_stacks() {
    let mut r = Resolver::default();
    let defining = with_stack(
        Event::alloc(7, 1, 64, AllocType::Scan),
        StackField::Frames(2),
        77,
    );
    let a = r.feed(&encode(&defining, &[10, 20])).unwrap();
    let reference = with_stack(Event::alloc(7, 9, 64, AllocType::Scan), StackField::Ref, 77);
    let b = r.feed(&encode(&reference, &[])).unwrap();
    let again = with_stack(
        Event::alloc(7, 2, 64, AllocType::Scan),
        StackField::Frames(2),
        0,
    );
    let c = r.feed(&encode(&again, &[10, 20])).unwrap();
    assert_eq!(a.key, b.key);
    assert_eq!(a.key, c.key, "identical stacks intern to one id");
    assert_eq!(r.stacks.frames(a.key.1), Some(&[10u64, 20][..]));
    assert_eq!(r.stacks.len(), 1);
    // An unknown reference: explicit "lost", never dropped.
    let unknown = with_stack(Event::alloc(7, 3, 64, AllocType::Scan), StackField::Ref, 78);
    let d = r.feed(&encode(&unknown, &[])).unwrap();
    assert_eq!(d.key, (7, Stack::Lost));
    assert_eq!(r.lost_stacks, 1);
    // Capture errors pass through with their errno.
    let failed = with_stack(
        Event::alloc(7, 4, 64, AllocType::Scan),
        StackField::Error(14),
        0,
    );
    let e = r.feed(&encode(&failed, &[])).unwrap();
    assert_eq!(e.key, (7, Stack::Failed(14)));
}

#[test]
fn pairs_syscalls_per_thread() {
    let mut r = Resolver::default();
    let enter = with_stack(
        Event::mmap_enter(7, 5, 8192, 3, 0x22),
        StackField::Frames(1),
        0,
    );
    assert_eq!(r.feed(&encode(&enter, &[99])), None);
    // Another thread's exit does not pair with it.
    let other = Event::syscall_exit(EventKind::MmapExit, 7, 6, 1);
    assert_eq!(r.feed(&encode(&other, &[])), None);
    assert_eq!(r.unpaired, 1);
    let exit = Event::syscall_exit(EventKind::MmapExit, 7, 5, 0x7f00_0000_0000);
    let got = r.feed(&encode(&exit, &[])).unwrap();
    assert_eq!(
        got.op,
        Op::Mmap {
            addr: 0x7f00_0000_0000,
            len: 8192,
            prot: 3
        }
    );
    assert_eq!(r.stacks.frames(got.key.1), Some(&[99u64][..]));
    // mremap and brk.
    let me = with_stack(
        Event::mremap_enter(7, 5, 0x1000, 0x2000, 0x3000),
        StackField::Frames(1),
        0,
    );
    r.feed(&encode(&me, &[99]));
    let mx = r
        .feed(&encode(
            &Event::syscall_exit(EventKind::MremapExit, 7, 5, 0x9000),
            &[],
        ))
        .unwrap();
    assert_eq!(
        mx.op,
        Op::Mremap {
            old: 0x1000,
            old_len: 0x2000,
            new: 0x9000,
            new_len: 0x3000
        }
    );
    let be = with_stack(Event::brk_enter(7, 5, 0), StackField::Frames(1), 0);
    r.feed(&encode(&be, &[99]));
    let bx = r
        .feed(&encode(
            &Event::syscall_exit(EventKind::BrkExit, 7, 5, 0x5000),
            &[],
        ))
        .unwrap();
    assert_eq!(bx.op, Op::Brk { result: 0x5000 });
}

#[test]
fn a_spawn_record_is_a_creation_in_one() {
    let mut r = Resolver::default();
    let spawned = with_stack(
        Event::go_spawned(7, 5, 0xc000, 0x4444),
        StackField::Frames(2),
        0,
    );
    let got = r.feed(&encode(&spawned, &[0x100, 0x200])).unwrap();
    assert_eq!(
        got.op,
        Op::GoCreate {
            g: 0xc000,
            start_pc: 0x4444
        }
    );
    assert_eq!(
        r.stacks.frames(got.key.1),
        Some(&[0x4444, 0x100, 0x200][..])
    );
    assert_eq!(r.unpaired, 0);
}

#[test]
fn goroutine_creation_pairs_and_gets_its_start_as_leaf() {
    let mut r = Resolver::default();
    let create = with_stack(Event::go_create(7, 5, 0x4444), StackField::Frames(2), 0);
    assert_eq!(r.feed(&encode(&create, &[0x100, 0x200])), None);
    let created = Event::goroutine(EventKind::GoCreated, 7, 5, 0xc000);
    let got = r.feed(&encode(&created, &[])).unwrap();
    assert_eq!(
        got.op,
        Op::GoCreate {
            g: 0xc000,
            start_pc: 0x4444
        }
    );
    assert_eq!(
        r.stacks.frames(got.key.1),
        Some(&[0x4444u64, 0x100, 0x200][..])
    );
    let hold = Event::hold(7, 5, HoldPoint::Exit, 3, true);
    assert_eq!(
        r.feed(&encode(&hold, &[])).unwrap().op,
        Op::Hold {
            point: HoldPoint::Exit,
            code: 3,
            stopped: true
        }
    );
}

#[test]
fn a_copied_label_set_decodes_and_a_short_or_oversized_one_is_an_error() {
    use memtrace_common::label_capture::{CAPTURED_LABEL_SIZE, CAPTURE_LABELS};
    use memtrace_common::CapturedLabel;
    let mut l = CapturedLabel {
        key_len: 5,
        value_len: 2,
        key: [0; 64],
        value: [0; 128],
    };
    l.key[..5].copy_from_slice(b"route");
    l.value[..2].copy_from_slice(b"/b");
    let ev = Event::label_set(7, 8, 0x1000, 42, 1);
    let mut bytes = encode(&ev, &[]);
    // SAFETY: CapturedLabel is plain old data.
    bytes.extend_from_slice(unsafe {
        std::slice::from_raw_parts(
            (&l as *const CapturedLabel).cast::<u8>(),
            CAPTURED_LABEL_SIZE,
        )
    });
    let got = label_set(&bytes).unwrap().unwrap();
    assert_eq!((got.pid, got.ptr, got.gen), (7, 0x1000, 42));
    assert_eq!(got.labels, vec![l]);
    // Cut short of the label it announces.
    assert!(matches!(
        label_set(&bytes[..bytes.len() - 1]),
        Some(Err(DecodeError::Short { .. }))
    ));
    // More labels than a copy holds.
    let too_many = Event::label_set(7, 8, 0x1000, 42, CAPTURE_LABELS as u32 + 1);
    assert_eq!(
        label_set(&encode(&too_many, &[])),
        Some(Err(DecodeError::LabelCount(CAPTURE_LABELS as u64 + 1)))
    );
    // Any other record is not a label set; the resolver skips one.
    assert_eq!(
        label_set(&encode(&Event::fault(7, 8, 0x7000, 4096), &[])),
        None
    );
    assert_eq!(Resolver::default().feed(&bytes), None);
}
