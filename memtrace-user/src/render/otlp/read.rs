//! OTLP back to pprof: one OTLP profile (one sample type) and its
//! dictionary as a pprof `Profile`, every index checked. What a receiver
//! would do; the tests compare it with `LENS.pb.gz`.

use std::collections::HashMap;

use opentelemetry_proto::tonic::profiles::v1development as pb;

use crate::render::pprof::{
    Function, Line, PbLabel, PbLocation, PbMapping, PbProfile, PbSample, ValueType,
};

/// An index that points outside its table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{table}[{index}] does not exist ({len} entries)")]
pub struct BadIndex {
    pub table: &'static str,
    pub index: i64,
    pub len: usize,
}

fn get<'a, T>(table: &'static str, v: &'a [T], index: i32) -> Result<&'a T, BadIndex> {
    usize::try_from(index)
        .ok()
        .and_then(|i| v.get(i))
        .ok_or(BadIndex {
            table,
            index: i64::from(index),
            len: v.len(),
        })
}

/// Converts `p` to pprof, with pprof's 1-based IDs for OTLP's indices and
/// the same string table.
pub fn to_pprof(d: &pb::ProfilesDictionary, p: &pb::Profile) -> Result<PbProfile, BadIndex> {
    let strings = &d.string_table;
    let s = |i: i32| get("string_table", strings, i).map(|_| i64::from(i));
    let vt = |t: &Option<pb::ValueType>| -> Result<ValueType, BadIndex> {
        let t = t.unwrap_or_default();
        Ok(ValueType {
            r#type: s(t.type_strindex)?,
            unit: s(t.unit_strindex)?,
        })
    };
    let sample_type = vt(&p.sample_type)?;
    let (mut locations, mut functions, mut mappings) = (Vec::new(), Vec::new(), Vec::new());
    let mut ids: [HashMap<i32, u64>; 3] = Default::default();
    let mut sample = Vec::with_capacity(p.sample.len());
    // Label values are attribute values, not strings: added to the table.
    let mut table = strings.clone();
    let mut text_index: HashMap<String, i64> = HashMap::new();
    for smp in &p.sample {
        let stack = get("stack_table", &d.stack_table, smp.stack_index)?;
        let mut location_id = Vec::with_capacity(stack.location_indices.len());
        for &li in &stack.location_indices {
            let next = ids[0].len() as u64 + 1;
            let id = *ids[0].entry(li).or_insert(next);
            location_id.push(id);
            if id != next {
                continue;
            }
            let loc = get("location_table", &d.location_table, li)?;
            let mapping_id = match loc.mapping_index {
                0 => 0,
                mi => {
                    let m = get("mapping_table", &d.mapping_table, mi)?;
                    let next = ids[1].len() as u64 + 1;
                    let id = *ids[1].entry(mi).or_insert(next);
                    if id == next {
                        mappings.push(PbMapping {
                            id,
                            memory_start: m.memory_start,
                            memory_limit: m.memory_limit,
                            file_offset: m.file_offset,
                            filename: s(m.filename_strindex)?,
                            ..PbMapping::default()
                        });
                    }
                    id
                }
            };
            let mut line = Vec::with_capacity(loc.line.len());
            for l in &loc.line {
                let f = get("function_table", &d.function_table, l.function_index)?;
                let next = ids[2].len() as u64 + 1;
                let function_id = *ids[2].entry(l.function_index).or_insert(next);
                if function_id == next {
                    functions.push(Function {
                        id: function_id,
                        name: s(f.name_strindex)?,
                        system_name: s(f.system_name_strindex)?,
                        filename: s(f.filename_strindex)?,
                        start_line: f.start_line,
                    });
                }
                line.push(Line {
                    function_id,
                    line: l.line,
                });
            }
            locations.push(PbLocation {
                id,
                mapping_id,
                address: loc.address,
                line,
            });
        }
        let mut label = Vec::with_capacity(smp.attribute_indices.len());
        for &ai in &smp.attribute_indices {
            let a = get("attribute_table", &d.attribute_table, ai)?;
            let text = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) => v,
                _ => continue,
            };
            let str = *text_index.entry(text.clone()).or_insert_with(|| {
                table.push(text.clone());
                table.len() as i64 - 1
            });
            label.push(PbLabel {
                key: s(a.key_strindex)?,
                str,
                ..PbLabel::default()
            });
        }
        sample.push(PbSample {
            location_id,
            value: smp.values.clone(),
            label,
        });
    }
    Ok(PbProfile {
        sample_type: vec![sample_type.clone()],
        sample,
        mapping: mappings,
        location: locations,
        function: functions,
        string_table: table,
        time_nanos: i64::try_from(p.time_unix_nano).unwrap_or(0),
        duration_nanos: i64::try_from(p.duration_nano).unwrap_or(0),
        period_type: Some(vt(&p.period_type)?),
        period: p.period,
        comment: Vec::new(),
        default_sample_type: sample_type.r#type,
    })
}
