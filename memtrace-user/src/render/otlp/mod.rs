//! OTLP profiles (`opentelemetry.proto.profiles.v1development`, the
//! official messages of the `opentelemetry-proto` crate): one
//! `ExportProfilesServiceRequest` for one or more processes.
//!
//! - One `ResourceProfiles` per process, its resource attributes by the
//!   semantic conventions ([`Origin`]); one `ScopeProfiles` (`memtrace`).
//! - An OTLP profile has one sample type, so each of a lens's pprof sample
//!   types (`objects`/`count`, `space`/`bytes`, `requested_space`/`bytes`;
//!   `goroutines`) becomes a profile of its own, sharing the stacks.
//! - One dictionary for the whole request: functions with file and start
//!   line, mappings with their build ID, locations with their address and
//!   inlined lines, stacks, and pprof labels as sample attributes.

mod dictionary;
pub mod read;

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::profiles::v1development as pb;
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::model::profile::Profile;
use crate::model::summary::TargetSummary;
use crate::render::pprof;
pub use dictionary::Dictionary;

/// Where a process's profiles come from: its resource attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    pub pid: Option<u32>,
    /// The executable's path.
    pub exe: Option<String>,
    /// e.g. `go1.27.3`.
    pub go_version: Option<String>,
    /// The main module's path, from the build info.
    pub module: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub node: Option<String>,
    pub host: Option<String>,
    /// A service name the front end knows better (a pod's `app` label).
    pub service: Option<String>,
}

impl Origin {
    /// What a report's summary says of one target: its process, binary,
    /// and the container its cgroup names.
    pub fn of_target(t: &TargetSummary) -> Self {
        let label = |k: &str| {
            t.labels.as_ref()?[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let from_cgroup = t
            .cgroup
            .as_ref()
            .and_then(|c| crate::host::cgroup::labels(&c.reading.path).container_id);
        Self {
            pid: Some(t.pid),
            exe: Some(t.exe.trim_end_matches(" (deleted)").to_string()),
            go_version: Some(t.go_version.clone()).filter(|v| !v.is_empty()),
            module: t.module.clone(),
            container_id: label("container_id").or(from_cgroup),
            pod_uid: label("pod_uid"),
            pod_name: label("pod_name"),
            namespace: label("pod_namespace"),
            ..Self::default()
        }
    }

    /// `service.name`: the front end's, else the Go module path, else the
    /// executable's name (`go build x.go` records no module).
    pub fn service_name(&self) -> String {
        let module = self
            .module
            .as_deref()
            .filter(|m| !m.is_empty() && *m != "command-line-arguments");
        let exe = self
            .exe
            .as_deref()
            .map(|e| e.rsplit('/').next().unwrap_or(e));
        self.service
            .as_deref()
            .or(module)
            .or(exe)
            .unwrap_or("unknown_service")
            .to_string()
    }

    /// The resource attributes, by the semantic conventions.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let s = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        };
        let mut out = vec![s("service.name", &self.service_name())];
        if let Some(pid) = self.pid {
            out.push(KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(i64::from(pid))),
                }),
            });
        }
        if let Some(exe) = &self.exe {
            out.push(s("process.executable.path", exe));
            out.push(s(
                "process.executable.name",
                exe.rsplit('/').next().unwrap_or(exe),
            ));
        }
        out.push(s("process.runtime.name", "go"));
        let optional = [
            ("process.runtime.version", &self.go_version),
            ("container.id", &self.container_id),
            ("k8s.pod.uid", &self.pod_uid),
            ("k8s.pod.name", &self.pod_name),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.node.name", &self.node),
            ("host.name", &self.host),
        ];
        out.extend(
            optional
                .iter()
                .filter_map(|(k, v)| Some(s(k, v.as_deref()?))),
        );
        out
    }
}

/// The machine's host name (`host.name`), if it has one.
pub fn host_name() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(h.trim().to_string()).filter(|h| !h.is_empty())
}

/// The request: for each process, its origin and its profiles (one per
/// lens). Processes with nothing to show are left out.
pub fn request(batches: &[(Origin, &[Profile])]) -> ExportProfilesServiceRequest {
    let mut dict = Dictionary::default();
    let resource_profiles = batches
        .iter()
        .filter_map(|(origin, profiles)| {
            let profiles: Vec<pb::Profile> = profiles
                .iter()
                .flat_map(|p| profiles_of(&mut dict, p))
                .collect();
            (!profiles.is_empty()).then(|| pb::ResourceProfiles {
                resource: Some(Resource {
                    attributes: origin.attributes(),
                    ..Resource::default()
                }),
                scope_profiles: vec![pb::ScopeProfiles {
                    scope: Some(InstrumentationScope {
                        name: "memtrace".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    profiles,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.table),
    }
}

/// One lens's profile as OTLP profiles, one per sample type; none if it
/// has no samples.
fn profiles_of(dict: &mut Dictionary, p: &Profile) -> Vec<pb::Profile> {
    if p.samples.is_empty() {
        return Vec::new();
    }
    let mappings: Vec<i32> = p.mappings.iter().map(|m| dict.mapping(m)).collect();
    let locations: Vec<i32> = p
        .locations
        .iter()
        .map(|l| {
            let m = l.mapping.and_then(|i| mappings.get(i)).copied();
            dict.location(l, m.unwrap_or(0))
        })
        .collect();
    // Each sample's stack (leaf first), attributes and values.
    let samples: Vec<(i32, Vec<i32>, Vec<i64>)> = p
        .samples
        .iter()
        .map(|s| {
            let stack = s
                .stack
                .iter()
                .rev()
                .filter_map(|&l| locations.get(l).copied())
                .collect();
            let attrs = s.labels.iter().map(|(k, v)| dict.attribute(k, v)).collect();
            (dict.stack(stack), attrs, pprof::sample_values(p, s))
        })
        .collect();
    let types = pprof::sample_types(p);
    let value_type = |dict: &mut Dictionary, (t, u): (&str, &str)| pb::ValueType {
        type_strindex: dict.string(t),
        unit_strindex: dict.string(u),
        aggregation_temporality: if p.lens.is_state() {
            pb::AggregationTemporality::Cumulative
        } else {
            pb::AggregationTemporality::Delta
        } as i32,
    };
    let period_type = value_type(dict, types[pprof::default_sample_type(p)]);
    let comment = dict.string(&p.title());
    let lens = dict.attribute("memtrace.lens", p.lens.name());
    types
        .iter()
        .enumerate()
        .map(|(i, &t)| pb::Profile {
            sample_type: Some(value_type(dict, t)),
            sample: samples
                .iter()
                .filter(|(_, _, v)| v[i] != 0)
                .map(|(stack, attrs, v)| pb::Sample {
                    stack_index: *stack,
                    values: vec![v[i]],
                    attribute_indices: attrs.clone(),
                    ..pb::Sample::default()
                })
                .collect(),
            time_unix_nano: u64::try_from(p.time_nanos).unwrap_or(0),
            duration_nano: (p.duration_secs.max(0.0) * 1e9) as u64,
            period_type: Some(period_type),
            period: 1,
            comment_strindices: vec![comment],
            profile_id: fastrand::u128(1..).to_le_bytes().to_vec(),
            attribute_indices: vec![lens],
            ..pb::Profile::default()
        })
        .collect()
}

#[cfg(test)]
mod tests;
