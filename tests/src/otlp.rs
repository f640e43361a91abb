//! The OTLP receiver's side: decoding what memtrace sent with the official
//! messages (`opentelemetry-proto`), checking every index against the
//! dictionary by the spec's rules, and reading the profiles back.

use std::collections::BTreeMap;
use std::io::Read as _;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development as pb;
use prost::Message as _;

use crate::receiver::Push;

/// The request in `push`, gunzipped if it says so; panics on anything that
/// is not a valid `ExportProfilesServiceRequest`.
pub fn decode(push: &Push) -> ExportProfilesServiceRequest {
    let body = match push.headers.get("content-encoding").map(String::as_str) {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(push.body.as_slice())
                .read_to_end(&mut out)
                .expect("a gzip body");
            out
        }
        None => push.body.clone(),
        Some(other) => panic!("content-encoding {other}"),
    };
    ExportProfilesServiceRequest::decode(body.as_slice()).expect("an ExportProfilesServiceRequest")
}

fn index(what: &str, i: i32, len: usize) -> Result<(), String> {
    if usize::try_from(i).is_ok_and(|i| i < len) {
        Ok(())
    } else {
        Err(format!("{what} {i} is outside its table ({len})"))
    }
}

/// Every index of `req` points into its table, and every table starts with
/// its zero value, as the profiles signal requires.
pub fn check(req: &ExportProfilesServiceRequest) -> Result<(), String> {
    let d = req.dictionary.as_ref().ok_or("no dictionary")?;
    let zero = d.string_table.first().is_some_and(String::is_empty)
        && d.mapping_table.first() == Some(&pb::Mapping::default())
        && d.location_table.first() == Some(&pb::Location::default())
        && d.function_table.first() == Some(&pb::Function::default())
        && d.link_table.first() == Some(&pb::Link::default())
        && d.attribute_table.first() == Some(&pb::KeyValueAndUnit::default())
        && d.stack_table.first() == Some(&pb::Stack::default());
    if !zero {
        return Err("a table does not start with its zero value".into());
    }
    let s = |what: &str, i: i32| index(what, i, d.string_table.len());
    let a = |i: i32| index("attribute", i, d.attribute_table.len());
    for kv in &d.attribute_table {
        s("attribute key", kv.key_strindex)?;
    }
    for f in &d.function_table {
        s("function name", f.name_strindex)?;
        s("function system name", f.system_name_strindex)?;
        s("function file", f.filename_strindex)?;
    }
    for m in &d.mapping_table {
        s("mapping file", m.filename_strindex)?;
        m.attribute_indices.iter().try_for_each(|&i| a(i))?;
    }
    for l in &d.location_table {
        index("mapping", l.mapping_index, d.mapping_table.len())?;
        for line in &l.line {
            index("function", line.function_index, d.function_table.len())?;
        }
    }
    for st in &d.stack_table {
        for &l in &st.location_indices {
            index("location", l, d.location_table.len())?;
        }
    }
    for rp in &req.resource_profiles {
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            for t in p.sample_type.iter().chain(&p.period_type) {
                s("sample type", t.type_strindex)?;
                s("sample unit", t.unit_strindex)?;
            }
            p.comment_strindices
                .iter()
                .try_for_each(|&i| s("comment", i))?;
            p.attribute_indices.iter().try_for_each(|&i| a(i))?;
            for smp in &p.sample {
                index("stack", smp.stack_index, d.stack_table.len())?;
                index("link", smp.link_index, d.link_table.len())?;
                smp.attribute_indices.iter().try_for_each(|&i| a(i))?;
                if smp.values.len() != 1 {
                    return Err(format!("a sample with {} values", smp.values.len()));
                }
            }
        }
    }
    Ok(())
}

/// Key-value attributes as text (integers written out).
pub fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// One received profile: its resource's attributes, its lens (the
/// `memtrace.lens` attribute), its sample type and unit.
pub struct Received<'a> {
    pub resource: BTreeMap<String, String>,
    pub lens: String,
    pub sample_type: String,
    pub unit: String,
    pub profile: &'a pb::Profile,
}

/// Every profile of `req`.
pub fn profiles(req: &ExportProfilesServiceRequest) -> Vec<Received<'_>> {
    let d = req.dictionary.as_ref().unwrap();
    let s = |i: i32| d.string_table[i as usize].clone();
    let mut out = Vec::new();
    for rp in &req.resource_profiles {
        let resource = attributes(&rp.resource.as_ref().unwrap().attributes);
        for p in rp.scope_profiles.iter().flat_map(|s| &s.profiles) {
            let lens = p
                .attribute_indices
                .iter()
                .map(|&i| &d.attribute_table[i as usize])
                .find(|kv| s(kv.key_strindex) == "memtrace.lens")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(v) => Some(v.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let t = p.sample_type.as_ref().unwrap();
            out.push(Received {
                resource: resource.clone(),
                lens,
                sample_type: s(t.type_strindex),
                unit: s(t.unit_strindex),
                profile: p,
            });
        }
    }
    out
}

/// A received profile as pprof (what a receiver converting to pprof does).
pub fn to_pprof(
    req: &ExportProfilesServiceRequest,
    p: &pb::Profile,
) -> memtrace_user::render::pprof::PbProfile {
    memtrace_user::render::otlp::read::to_pprof(req.dictionary.as_ref().unwrap(), p)
        .expect("indices checked")
}
