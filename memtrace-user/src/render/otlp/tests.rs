use super::*;
use crate::model::lens::Lens;
use crate::model::profile::{Frame, FrameMode, Location, Mapping, Sample};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

fn frame(name: &str, line: u32) -> Frame {
    Frame {
        function: name.into(),
        file: "/src/app/main.go".into(),
        line,
        start_line: 10,
        inlined: false,
    }
}

/// alloc-exact (three sample types), an inlined frame, a label, and a
/// sample with no requested bytes.
fn profile() -> Profile {
    let mut p = Profile::new(
        Lens::AllocExact,
        vec![
            Location {
                address: 0x401000,
                mapping: Some(0),
                frames: vec![frame("main.main", 5)],
            },
            Location {
                address: 0x401234,
                mapping: Some(0),
                frames: vec![frame("main.outer", 20), frame("main.newPoint", 42)],
            },
            Location {
                address: 0x401300,
                mapping: Some(0),
                frames: vec![frame("main.other", 7)],
            },
        ],
        vec![Mapping {
            start: 0x400000,
            limit: 0x480000,
            offset: 0,
            file: "/srv/app".into(),
            build_id: "aa/bb/cc/dd".into(),
        }],
        [
            Sample {
                stack: vec![0, 1],
                value: 640,
                objects: 10,
                requested: 600,
                labels: vec![("route".into(), "/b".into())],
            },
            Sample {
                stack: vec![0, 2],
                value: 64,
                objects: 1,
                requested: 0,
                labels: vec![],
            },
        ],
        2.0,
        "t".into(),
    );
    p.time_nanos = 1_700_000_000_000_000_000;
    p
}

fn origin() -> Origin {
    Origin {
        pid: Some(42),
        exe: Some("/srv/app".into()),
        go_version: Some("go1.27.3".into()),
        module: Some("example.com/shop/cart".into()),
        container_id: Some("c0ffee".into()),
        host: Some("node-a".into()),
        ..Origin::default()
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
}

#[test]
fn a_profile_becomes_one_otlp_profile_per_sample_type() {
    let p = profile();
    let bytes = request(&[(origin(), std::slice::from_ref(&p))]).encode_to_vec();
    let req = ExportProfilesServiceRequest::decode(bytes.as_slice()).unwrap();
    let d = req.dictionary.as_ref().unwrap();
    // Every table starts with its zero value.
    assert_eq!(d.string_table[0], "");
    assert_eq!(d.mapping_table[0], pb::Mapping::default());
    assert_eq!(d.stack_table[0], pb::Stack::default());
    assert_eq!(req.resource_profiles.len(), 1);
    let rp = &req.resource_profiles[0];
    let attrs = &rp.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(attrs, "process.pid"), Some(&Value::IntValue(42)));
    let text = |k| match attr(attrs, k) {
        Some(Value::StringValue(s)) => s.as_str(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("service.name"), "example.com/shop/cart");
    assert_eq!(text("process.executable.name"), "app");
    assert_eq!(text("process.runtime.name"), "go");
    assert_eq!(text("process.runtime.version"), "go1.27.3");
    assert_eq!(text("container.id"), "c0ffee");
    assert_eq!(text("host.name"), "node-a");
    assert!(
        attr(attrs, "k8s.pod.name").is_none(),
        "no pod: no attribute"
    );
    assert_eq!(
        rp.scope_profiles[0].scope.as_ref().unwrap().name,
        "memtrace"
    );

    let s = |i: i32| d.string_table[i as usize].as_str();
    let profiles = &rp.scope_profiles[0].profiles;
    let types: Vec<(&str, &str)> = profiles
        .iter()
        .map(|p| {
            let t = p.sample_type.as_ref().unwrap();
            (s(t.type_strindex), s(t.unit_strindex))
        })
        .collect();
    assert_eq!(
        types,
        [
            ("objects", "count"),
            ("space", "bytes"),
            ("requested_space", "bytes")
        ]
    );
    let values =
        |i: usize| -> Vec<i64> { profiles[i].sample.iter().map(|s| s.values[0]).collect() };
    assert_eq!(values(0), [10, 1]);
    assert_eq!(values(1), [640, 64]);
    assert_eq!(values(2), [600], "a zero value is no sample");
    let space = &profiles[1];
    assert_eq!(space.time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(space.duration_nano, 2_000_000_000);
    assert_eq!(
        space.sample_type.as_ref().unwrap().aggregation_temporality,
        pb::AggregationTemporality::Delta as i32
    );
    // The label, as a sample attribute.
    let a = &d.attribute_table[space.sample[0].attribute_indices[0] as usize];
    assert_eq!(s(a.key_strindex), "route");
    // The mapping's build ID.
    let m = &d.mapping_table[1];
    let b = &d.attribute_table[m.attribute_indices[0] as usize];
    assert_eq!(s(b.key_strindex), "process.executable.build_id.go");
    // Leaf first; the inlined function first in its location.
    let stack = &d.stack_table[space.sample[0].stack_index as usize];
    let leaf = &d.location_table[stack.location_indices[0] as usize];
    assert_eq!((leaf.address, leaf.mapping_index), (0x401234, 1));
    let names: Vec<&str> = leaf
        .line
        .iter()
        .map(|l| s(d.function_table[l.function_index as usize].name_strindex))
        .collect();
    assert_eq!(names, ["main.newPoint", "main.outer"]);
}

#[test]
fn back_to_pprof_it_folds_as_the_pprof_rendering_does() {
    let p = profile();
    let req = request(&[(origin(), std::slice::from_ref(&p))]);
    let d = req.dictionary.as_ref().unwrap();
    let space = &req.resource_profiles[0].scope_profiles[0].profiles[1];
    let back = read::to_pprof(d, space).unwrap();
    let direct = pprof::build(&p);
    for mode in [FrameMode::Func, FrameMode::Line] {
        assert_eq!(pprof::folded(&back, mode), pprof::folded(&direct, mode));
    }
    let label = &back.sample[0].label[0];
    let s = |i: i64| back.string_table[i as usize].as_str();
    assert_eq!((s(label.key), s(label.str)), ("route", "/b"));
}

#[test]
fn a_bad_index_is_an_error_not_a_panic() {
    let p = profile();
    let req = request(&[(origin(), std::slice::from_ref(&p))]);
    let mut d = req.dictionary.clone().unwrap();
    let space = &req.resource_profiles[0].scope_profiles[0].profiles[1];
    d.function_table.truncate(1);
    let e = read::to_pprof(&d, space).unwrap_err();
    assert_eq!(e.table, "function_table");
    let mut bad = space.clone();
    bad.sample[0].stack_index = -1;
    assert!(read::to_pprof(req.dictionary.as_ref().unwrap(), &bad).is_err());
}

#[test]
fn nothing_to_show_sends_no_resource() {
    let mut p = profile();
    p.samples.clear();
    let req = request(&[(origin(), std::slice::from_ref(&p))]);
    assert!(req.resource_profiles.is_empty());
}

#[test]
fn the_service_name_falls_back_to_the_executable() {
    let mut o = origin();
    o.service = Some("cart".into());
    assert_eq!(o.service_name(), "cart");
    o.service = None;
    o.module = Some("command-line-arguments".into());
    assert_eq!(o.service_name(), "app");
    assert_eq!(Origin::default().service_name(), "unknown_service");
}
