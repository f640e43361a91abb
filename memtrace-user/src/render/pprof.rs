//! pprof's `profile.proto`, gzipped, as `go tool pprof` reads it.
//!
//! The message types below mirror the upstream schema field for field
//! (github.com/google/pprof/proto/profile.proto); prost does the encoding.
//! Every binary is a Mapping, every program counter a Location with its
//! address and one Line per frame there (the innermost inlined function
//! first, as pprof orders them), and every function a Function with its
//! file and start line: `-list`, `-lines`, `-addresses` and `-traces` work.

use crate::model::profile::Frame;
use crate::model::profile::FrameMode;
use std::collections::HashMap;
use std::io::Write as _;

use flate2::{write::GzEncoder, Compression};
use prost::Message;

use crate::model::profile::Profile;

#[derive(Clone, PartialEq, Message)]
pub struct PbProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PbSample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<PbMapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<PbLocation>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<PbLabel>,
}

/// A sample's label: `go tool pprof -tags`, `-tagfocus` and `-tagroot`
/// read them.
#[derive(Clone, PartialEq, Message)]
pub struct PbLabel {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbMapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLocation {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self::default();
        s.get(""); // index 0 must be the empty string
        s
    }
    fn get(&mut self, v: &str) -> i64 {
        if let Some(i) = self.index.get(v) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// A profile's sample types as (type, unit), in the order of each
/// sample's values: `objects`/`count` for the allocation lenses, then
/// `space`/`bytes` (or the unit itself, `goroutines`), then alloc-exact's
/// `requested_space`. The pprof and OTLP renderings share them.
pub fn sample_types(p: &Profile) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::with_capacity(3);
    if p.has_objects {
        v.push(("objects", "count"));
    }
    v.push((if p.unit == "bytes" { "space" } else { p.unit }, p.unit));
    if p.has_requested {
        v.push(("requested_space", p.unit));
    }
    v
}

/// Which of [`sample_types`] is the default (`space`, or the unit).
pub fn default_sample_type(p: &Profile) -> usize {
    usize::from(p.has_objects)
}

/// One sample's values, in [`sample_types`]' order.
pub fn sample_values(p: &Profile, s: &crate::model::profile::Sample) -> Vec<i64> {
    let mut v = Vec::with_capacity(3);
    if p.has_objects {
        v.push(s.objects as i64);
    }
    v.push(s.value as i64);
    if p.has_requested {
        v.push(s.requested as i64);
    }
    v
}

/// Builds the protobuf message (not yet encoded).
pub fn build(p: &Profile) -> PbProfile {
    let mut strings = Strings::new();
    let sample_type: Vec<ValueType> = sample_types(p)
        .into_iter()
        .map(|(t, u)| ValueType {
            r#type: strings.get(t),
            unit: strings.get(u),
        })
        .collect();
    let default = sample_type[default_sample_type(p)].clone();
    let mapping: Vec<PbMapping> = p
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| PbMapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.offset,
            filename: strings.get(&m.file),
            build_id: strings.get(&m.build_id),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        })
        .collect();
    let mut function: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(&str, &str, u32), u64> = HashMap::new();
    let mut location = Vec::with_capacity(p.locations.len());
    for (i, loc) in p.locations.iter().enumerate() {
        let line = loc
            .frames
            .iter()
            .rev()
            .map(|f| {
                let key = (&*f.function, &*f.file, f.start_line);
                let id = *function_ids.entry(key).or_insert_with(|| {
                    let id = function.len() as u64 + 1;
                    let name = strings.get(&f.function);
                    function.push(Function {
                        id,
                        name,
                        system_name: name,
                        filename: strings.get(&f.file),
                        start_line: i64::from(f.start_line),
                    });
                    id
                });
                Line {
                    function_id: id,
                    line: i64::from(f.line),
                }
            })
            .collect();
        location.push(PbLocation {
            id: i as u64 + 1,
            mapping_id: loc.mapping.map_or(0, |m| m as u64 + 1),
            address: loc.address,
            line,
        });
    }
    let sample = samples(p, &mut strings);
    let comment = vec![strings.get(&p.title())];
    PbProfile {
        default_sample_type: default.r#type,
        period_type: Some(default),
        period: 1,
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        time_nanos: p.time_nanos,
        duration_nanos: (p.duration_secs * 1e9) as i64,
        comment,
    }
}

/// The samples: each stack leaf first, its values in the sample types'
/// order, and its labels.
fn samples(p: &Profile, strings: &mut Strings) -> Vec<PbSample> {
    p.samples
        .iter()
        .map(|s| {
            let value = sample_values(p, s);
            PbSample {
                location_id: s.stack.iter().rev().map(|&l| l as u64 + 1).collect(),
                value,
                label: s
                    .labels
                    .iter()
                    .map(|(k, v)| PbLabel {
                        key: strings.get(k),
                        str: strings.get(v),
                        num: 0,
                        num_unit: 0,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Encoded and gzipped, ready for `LENS.pb.gz`.
pub fn render(p: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&build(p).encode_to_vec())?;
    gz.finish()
}

/// Reads a `.pb.gz` (or plain) profile.
pub fn decode(bytes: &[u8]) -> std::io::Result<PbProfile> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)?;
        out
    } else {
        bytes.to_vec()
    };
    PbProfile::decode(raw.as_slice()).map_err(std::io::Error::other)
}

/// A decoded profile as folded lines (root first; the last sample value),
/// frames named by function or by source line.
pub fn folded(pb: &PbProfile, mode: FrameMode) -> String {
    let s = |i: i64| pb.string_table.get(i as usize).map_or("", String::as_str);
    let functions: HashMap<u64, &Function> = pb.function.iter().map(|f| (f.id, f)).collect();
    let locations: HashMap<u64, &PbLocation> = pb.location.iter().map(|l| (l.id, l)).collect();
    // The default sample type's value (alloc-exact's last is requested_space).
    let index = pb
        .sample_type
        .iter()
        .position(|t| t.r#type == pb.default_sample_type)
        .unwrap_or(pb.sample_type.len().saturating_sub(1));
    let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
    for sample in &pb.sample {
        let mut names = Vec::new();
        for id in sample.location_id.iter().rev() {
            let Some(loc) = locations.get(id) else {
                continue;
            };
            for line in loc.line.iter().rev() {
                let Some(f) = functions.get(&line.function_id) else {
                    continue;
                };
                let frame = Frame {
                    function: s(f.name).into(),
                    file: s(f.filename).into(),
                    line: u32::try_from(line.line).unwrap_or(0),
                    start_line: 0,
                    inlined: false,
                };
                names.push(match mode {
                    FrameMode::Func => frame.function.to_string(),
                    FrameMode::Line => frame.with_line(),
                });
            }
        }
        *sums.entry(super::folded::stack(&names)).or_default() +=
            sample.value.get(index).copied().unwrap_or(0);
    }
    sums.into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k} {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lens::Lens;
    use crate::model::profile::{Frame, Location, Mapping, Sample};

    #[test]
    fn encodes_mappings_addresses_lines_and_inlining() {
        let f = |name: &str, line, inlined| Frame {
            function: name.into(),
            file: "/src/app/main.go".into(),
            line,
            start_line: 10,
            inlined,
        };
        let p = Profile::new(
            Lens::AllocExact,
            vec![
                Location {
                    address: 0,
                    mapping: None,
                    frames: vec![Frame::named("main.main")],
                },
                Location {
                    address: 0x401234,
                    mapping: Some(0),
                    frames: vec![f("main.outer", 20, false), f("main.newPoint", 42, true)],
                },
            ],
            vec![Mapping {
                start: 0x401000,
                limit: 0x480000,
                offset: 0x1000,
                file: "/srv/app".into(),
                build_id: "abc".into(),
            }],
            [Sample {
                stack: vec![0, 1],
                value: 640,
                objects: 10,
                requested: 600,
                labels: vec![("route".into(), "/b".into())],
            }],
            1.0,
            "t".into(),
        );
        let pb = build(&p);
        let s = |i: i64| pb.string_table[i as usize].as_str();
        assert_eq!(s(0), "");
        // objects, space (as the runtime accounts it), requested_space.
        assert_eq!(pb.sample[0].value, vec![10, 640, 600]);
        let label = &pb.sample[0].label[0];
        assert_eq!((s(label.key), s(label.str)), ("route", "/b"));
        let types: Vec<&str> = pb.sample_type.iter().map(|t| s(t.r#type)).collect();
        assert_eq!(types, ["objects", "space", "requested_space"]);
        assert_eq!(s(pb.default_sample_type), "space");
        assert_eq!(pb.period_type.as_ref().map(|t| s(t.r#type)), Some("space"));
        assert_eq!(pb.mapping.len(), 1);
        assert_eq!(s(pb.mapping[0].filename), "/srv/app");
        assert!(pb.mapping[0].has_line_numbers && pb.mapping[0].has_inline_frames);
        // Leaf first: the inlined location, innermost line first.
        let leaf = &pb.location[(pb.sample[0].location_id[0] - 1) as usize];
        assert_eq!((leaf.address, leaf.mapping_id), (0x401234, 1));
        let names: Vec<&str> = leaf
            .line
            .iter()
            .map(|l| s(pb.function[(l.function_id - 1) as usize].name))
            .collect();
        assert_eq!(names, ["main.newPoint", "main.outer"]);
        assert_eq!(leaf.line[0].line, 42);
        let func = &pb.function[(leaf.line[0].function_id - 1) as usize];
        assert_eq!(
            (s(func.filename), func.start_line),
            ("/src/app/main.go", 10)
        );
        let gz = render(&p).unwrap();
        assert_eq!(decode(&gz).unwrap(), pb, "round trip through gzip");
        assert_eq!(
            folded(&pb, crate::model::profile::FrameMode::Func),
            "main.main;main.outer;main.newPoint 640\n"
        );
        assert_eq!(
            folded(&pb, crate::model::profile::FrameMode::Line),
            "main.main;main.outer main.go:20;main.newPoint main.go:42 640\n"
        );
    }
}
