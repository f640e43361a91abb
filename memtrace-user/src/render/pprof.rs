//! pprof's `profile.proto`, gzipped, as `go tool pprof` reads it.
//!
//! The message types below mirror the upstream schema field for field
//! (github.com/google/pprof/proto/profile.proto); prost does the encoding.
//! Each distinct frame name becomes one function and one location.

use std::collections::HashMap;
use std::io::Write as _;

use flate2::{write::GzEncoder, Compression};
use prost::Message;

use super::Profile;

#[derive(Clone, PartialEq, Message)]
pub struct PbProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<PbSample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
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
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
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

/// Builds the protobuf message (not yet encoded).
pub fn build(p: &Profile) -> PbProfile {
    let mut strings = Strings::new();
    let unit = strings.get(p.unit);
    let mut sample_type = Vec::new();
    if p.has_objects {
        let objects = strings.get("objects");
        let count = strings.get("count");
        sample_type.push(ValueType {
            r#type: objects,
            unit: count,
        });
    }
    let space = strings.get(if p.unit == "bytes" { "space" } else { p.unit });
    sample_type.push(ValueType {
        r#type: space,
        unit,
    });
    let mut ids: HashMap<&str, u64> = HashMap::new();
    let mut function = Vec::new();
    let mut location = Vec::new();
    let mut sample = Vec::new();
    for s in &p.samples {
        let mut location_id = Vec::with_capacity(s.frames.len());
        for f in s.frames.iter().rev() {
            let id = *ids.entry(f.as_str()).or_insert_with(|| {
                let id = function.len() as u64 + 1;
                let name = strings.get(f);
                function.push(Function {
                    id,
                    name,
                    system_name: name,
                });
                location.push(Location {
                    id,
                    line: vec![Line { function_id: id }],
                });
                id
            });
            location_id.push(id);
        }
        let mut value = Vec::new();
        if p.has_objects {
            value.push(s.objects as i64);
        }
        value.push(s.value as i64);
        sample.push(PbSample { location_id, value });
    }
    let comment = vec![strings.get(&p.title())];
    let default_sample_type = space;
    PbProfile {
        period_type: sample_type.last().cloned(),
        period: 1,
        sample_type,
        sample,
        location,
        function,
        string_table: strings.table,
        time_nanos: 0,
        duration_nanos: (p.duration_secs * 1e9) as i64,
        comment,
        default_sample_type,
    }
}

/// Encoded and gzipped, ready for `LENS.pb.gz`.
pub fn render(p: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&build(p).encode_to_vec())?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::super::{sample, Profile};
    use super::*;

    #[test]
    fn encodes_and_decodes() {
        let p = Profile::new(
            crate::lens::Lens::AllocExact,
            [
                sample(&["main.main", "main.leak"], 640, 10),
                sample(&["main.main"], 64, 1),
            ],
            1.0,
            "t".into(),
        );
        let pb = build(&p);
        assert_eq!(pb.string_table[0], "");
        assert_eq!(pb.sample_type.len(), 2);
        assert_eq!(pb.sample[0].value, vec![10, 640]);
        // leaf first
        let leaf = pb.sample[0].location_id[0];
        let f = &pb.function[(leaf - 1) as usize];
        assert_eq!(pb.string_table[f.name as usize], "main.leak");
        let bytes = build(&p).encode_to_vec();
        assert_eq!(PbProfile::decode(bytes.as_slice()).unwrap(), pb);
        let gz = render(&p).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    }
}
