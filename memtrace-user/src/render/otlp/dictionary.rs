//! The request-wide `ProfilesDictionary`: every table interned, each with
//! its zero value first, so that index 0 means "not set" everywhere.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue};
use opentelemetry_proto::tonic::profiles::v1development as pb;

use crate::model::profile::{Frame, Location, Mapping};

/// A location's key: its mapping, address and lines (function, line).
type LocationKey = (i32, u64, Vec<(i32, i64)>);

/// Builds one [`pb::ProfilesDictionary`], handing out indices.
pub struct Dictionary {
    pub table: pb::ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32, i64), i32>,
    mappings: HashMap<(u64, u64, u64, i32, Vec<i32>), i32>,
    locations: HashMap<LocationKey, i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(i32, String), i32>,
}

/// The next index of a table that holds `len` entries.
fn next(len: usize) -> i32 {
    i32::try_from(len).expect("an OTLP table is indexed by i32")
}

impl Default for Dictionary {
    fn default() -> Self {
        let table = pb::ProfilesDictionary {
            mapping_table: vec![pb::Mapping::default()],
            location_table: vec![pb::Location::default()],
            function_table: vec![pb::Function::default()],
            link_table: vec![pb::Link::default()],
            string_table: vec![String::new()],
            attribute_table: vec![pb::KeyValueAndUnit::default()],
            stack_table: vec![pb::Stack::default()],
        };
        Self {
            table,
            strings: HashMap::from([(String::new(), 0)]),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
        }
    }
}

impl Dictionary {
    pub fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = next(self.table.string_table.len());
        self.table.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// A string attribute (pprof labels, build IDs).
    pub fn attribute(&mut self, key: &str, value: &str) -> i32 {
        let k = self.string(key);
        if let Some(&i) = self.attributes.get(&(k, value.to_string())) {
            return i;
        }
        let i = next(self.table.attribute_table.len());
        self.table.attribute_table.push(pb::KeyValueAndUnit {
            key_strindex: k,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            unit_strindex: 0,
        });
        self.attributes.insert((k, value.to_string()), i);
        i
    }

    fn function(&mut self, f: &Frame) -> i32 {
        let name = self.string(&f.function);
        let file = self.string(&f.file);
        let key = (name, file, i64::from(f.start_line));
        if let Some(&i) = self.functions.get(&key) {
            return i;
        }
        let i = next(self.table.function_table.len());
        self.table.function_table.push(pb::Function {
            name_strindex: name,
            system_name_strindex: name,
            filename_strindex: file,
            start_line: key.2,
        });
        self.functions.insert(key, i);
        i
    }

    /// A binary, with its build ID as `process.executable.build_id.go` (Go's
    /// `a/b/c/d` form) or `.gnu` (hex).
    pub fn mapping(&mut self, m: &Mapping) -> i32 {
        let file = self.string(&m.file);
        let mut attrs = Vec::new();
        if !m.build_id.is_empty() {
            let kind = if m.build_id.contains('/') {
                "go"
            } else {
                "gnu"
            };
            let key = format!("process.executable.build_id.{kind}");
            attrs.push(self.attribute(&key, &m.build_id));
        }
        let key = (m.start, m.limit, m.offset, file, attrs);
        if let Some(&i) = self.mappings.get(&key) {
            return i;
        }
        let i = next(self.table.mapping_table.len());
        self.table.mapping_table.push(pb::Mapping {
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.offset,
            filename_strindex: file,
            attribute_indices: key.4.clone(),
        });
        self.mappings.insert(key, i);
        i
    }

    /// A location in `mapping` (0: none); its lines innermost first, the
    /// caller that the others were inlined into last.
    pub fn location(&mut self, loc: &Location, mapping: i32) -> i32 {
        let lines: Vec<(i32, i64)> = loc
            .frames
            .iter()
            .rev()
            .map(|f| (self.function(f), i64::from(f.line)))
            .collect();
        let key = (mapping, loc.address, lines);
        if let Some(&i) = self.locations.get(&key) {
            return i;
        }
        let i = next(self.table.location_table.len());
        self.table.location_table.push(pb::Location {
            mapping_index: mapping,
            address: loc.address,
            line: key
                .2
                .iter()
                .map(|&(function_index, line)| pb::Line {
                    function_index,
                    line,
                    column: 0,
                })
                .collect(),
            attribute_indices: Vec::new(),
        });
        self.locations.insert(key, i);
        i
    }

    /// A stack of location indices, leaf first.
    pub fn stack(&mut self, leaf_first: Vec<i32>) -> i32 {
        if let Some(&i) = self.stacks.get(&leaf_first) {
            return i;
        }
        let i = next(self.table.stack_table.len());
        self.table.stack_table.push(pb::Stack {
            location_indices: leaf_first.clone(),
        });
        self.stacks.insert(leaf_first, i);
        i
    }
}
