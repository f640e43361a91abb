//! Output formats. Every renderer takes a [`Profile`] (symbolized stacks of
//! program counters) and returns bytes; nothing here touches the kernel or
//! the target.
//!
//! A profile keeps what pprof keeps: each distinct program counter is a
//! [`Location`] (its address, the binary it is in, and the source frames
//! there, inlined ones included), and each sample is a stack of locations.
//! The flame graph, folded stacks and `summary.json` see stacks of names,
//! by function or by source line ([`FrameMode`]), merged with
//! [`Profile::named`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::labels::{LabelSet, NO_LABELS};

/// The value of `key` in `labels`.
pub fn label_value<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

use crate::model::lens::Lens;

/// One function at one source position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: Arc<str>,
    /// The source file ("" when unknown).
    pub file: Arc<str>,
    /// 0 when unknown.
    pub line: u32,
    /// The line the function starts on; 0 when unknown.
    pub start_line: u32,
    /// Inlined into the frame before it (its caller, at the same address).
    pub inlined: bool,
}

impl Frame {
    /// A frame that is only a name (a process root, "[stack unavailable]").
    pub fn named(name: &str) -> Self {
        Self {
            function: name.into(),
            file: "".into(),
            line: 0,
            start_line: 0,
            inlined: false,
        }
    }

    /// `function file:line`, with the file's base name (the function alone
    /// when the position is unknown).
    pub fn with_line(&self) -> String {
        if self.file.is_empty() || self.line == 0 {
            return self.function.to_string();
        }
        let base = self.file.rsplit('/').next().unwrap_or(&self.file);
        format!("{} {base}:{}", self.function, self.line)
    }
}

/// A binary mapped into a traced process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub file: String,
    pub build_id: String,
}

/// One program counter: the frames there, outermost first (the function
/// containing it, then each function inlined into it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The address as the stack had it (0 for a named pseudo-frame).
    pub address: u64,
    /// Index into [`Profile::mappings`].
    pub mapping: Option<usize>,
    pub frames: Vec<Frame>,
}

/// One stack and its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Indices into [`Profile::locations`], root first.
    pub stack: Vec<usize>,
    pub value: u64,
    pub objects: u64,
    /// alloc-exact: the bytes requested (`value` is what the runtime
    /// accounts for them).
    pub requested: u64,
    /// The pprof labels of the goroutine that did it, sorted by key.
    pub labels: LabelSet,
}

/// How frames are named in flame graphs and folded stacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameMode {
    /// By function, `main.handle`.
    #[default]
    Func,
    /// By function and source line, `main.handle server.go:42`.
    Line,
}

/// A stack by name, merged over the samples that print the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    /// Names, root first.
    pub names: Vec<String>,
    /// The frames (with their positions) of the largest sample merged here.
    pub frames: Vec<Frame>,
    pub value: u64,
    pub objects: u64,
    /// alloc-exact: the bytes requested.
    pub requested: u64,
}

/// A lens's result, ready to render.
#[derive(Clone, Debug)]
pub struct Profile {
    pub lens: Lens,
    /// `bytes` or `goroutines`.
    pub unit: &'static str,
    /// Whether `objects` is meaningful (allocation lenses).
    pub has_objects: bool,
    /// Whether `requested` is meaningful (alloc-exact).
    pub has_requested: bool,
    pub locations: Vec<Location>,
    pub mappings: Vec<Mapping>,
    /// Sorted by value, descending; identical stacks merged.
    pub samples: Vec<Sample>,
    pub duration_secs: f64,
    /// When the profile's window began, nanoseconds since the Unix epoch
    /// (0: unknown).
    pub time_nanos: i64,
    /// Human description of what was traced, for titles.
    pub target: String,
}

/// Builds a profile's location table, one entry per distinct location.
#[derive(Default)]
pub struct Locations {
    pub locations: Vec<Location>,
    index: HashMap<Location, usize>,
}

impl Locations {
    /// The index of `loc`, added if new.
    pub fn intern(&mut self, loc: Location) -> usize {
        if let Some(&i) = self.index.get(&loc) {
            return i;
        }
        let i = self.locations.len();
        self.index.insert(loc.clone(), i);
        self.locations.push(loc);
        i
    }

    /// The index of a pseudo-frame named `name`.
    pub fn named(&mut self, name: &str) -> usize {
        self.intern(Location {
            address: 0,
            mapping: None,
            frames: vec![Frame::named(name)],
        })
    }
}

impl Profile {
    /// Builds a profile of `lens`, merging samples with identical stacks and
    /// dropping empty ones.
    pub fn new(
        lens: Lens,
        locations: Vec<Location>,
        mappings: Vec<Mapping>,
        samples: impl IntoIterator<Item = Sample>,
        duration_secs: f64,
        target: String,
    ) -> Self {
        let mut merged: HashMap<(Vec<usize>, LabelSet), (u64, u64, u64)> = HashMap::new();
        for s in samples {
            let e = merged.entry((s.stack, s.labels)).or_default();
            e.0 += s.value;
            e.1 += s.objects;
            e.2 += s.requested;
        }
        let mut samples: Vec<Sample> = merged
            .into_iter()
            .filter(|(_, (v, _, _))| *v > 0)
            .map(|((stack, labels), (value, objects, requested))| Sample {
                stack,
                value,
                objects,
                requested,
                labels,
            })
            .collect();
        samples.sort_by(|a, b| {
            b.value
                .cmp(&a.value)
                .then_with(|| a.stack.cmp(&b.stack))
                .then_with(|| a.labels.cmp(&b.labels))
        });
        Self {
            lens,
            unit: lens.unit(),
            has_objects: lens.spec().has_objects,
            has_requested: lens.spec().requested,
            locations,
            mappings,
            samples,
            duration_secs,
            time_nanos: 0,
            target,
        }
    }

    /// A profile of stacks that are only names (tests, folded input).
    pub fn from_names<'a>(
        lens: Lens,
        stacks: impl IntoIterator<Item = (&'a [String], u64, u64)>,
        duration_secs: f64,
        target: String,
    ) -> Self {
        let mut locs = Locations::default();
        let samples: Vec<Sample> = stacks
            .into_iter()
            .map(|(names, value, objects)| Sample {
                stack: names.iter().map(|n| locs.named(n)).collect(),
                value,
                objects,
                ..Sample::default()
            })
            .collect();
        Self::new(
            lens,
            locs.locations,
            Vec::new(),
            samples,
            duration_secs,
            target,
        )
    }

    /// The frames of a sample, root first.
    pub fn frames<'a>(&'a self, s: &'a Sample) -> impl Iterator<Item = &'a Frame> + 'a {
        s.stack
            .iter()
            .flat_map(move |&l| self.locations[l].frames.iter())
    }

    /// The samples as stacks of names (`mode`), merged where they print the
    /// same, largest first.
    pub fn named(&self, mode: FrameMode) -> Vec<Named> {
        let mut by: HashMap<Vec<String>, Named> = HashMap::new();
        for s in &self.samples {
            let frames: Vec<Frame> = self.frames(s).cloned().collect();
            let names: Vec<String> = frames
                .iter()
                .map(|f| match mode {
                    FrameMode::Func => f.function.to_string(),
                    FrameMode::Line => f.with_line(),
                })
                .collect();
            let e = by.entry(names.clone()).or_insert_with(|| Named {
                names,
                frames: frames.clone(),
                value: 0,
                objects: 0,
                requested: 0,
            });
            // Samples come largest first: the first one's frames stay.
            e.value += s.value;
            e.objects += s.objects;
            e.requested += s.requested;
        }
        let mut out: Vec<Named> = by.into_values().collect();
        out.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.names.cmp(&b.names)));
        out
    }

    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.value).sum()
    }

    /// The total by label: key → value → total, [`NO_LABELS`] for the
    /// samples without the key. Empty when no sample has labels.
    pub fn by_label(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let keys: BTreeSet<&str> = self
            .samples
            .iter()
            .flat_map(|s| s.labels.iter().map(|(k, _)| k.as_str()))
            .collect();
        let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for key in keys {
            let totals = out.entry(key.to_string()).or_default();
            for s in &self.samples {
                let value = label_value(&s.labels, key).unwrap_or(NO_LABELS);
                *totals.entry(value.to_string()).or_default() += s.value;
            }
        }
        out
    }

    /// The profile with a root frame `[KEY=value]` per key of `keys` on
    /// every stack (`[KEY=[no labels]]` where the sample has no such
    /// label): a flame graph split by label.
    pub fn split_by_labels(&self, keys: &[String]) -> Profile {
        let mut p = self.clone();
        if keys.is_empty() {
            return p;
        }
        let mut locs = Locations {
            locations: std::mem::take(&mut p.locations),
            index: HashMap::new(),
        };
        for s in &mut p.samples {
            let roots: Vec<usize> = keys
                .iter()
                .map(|k| {
                    let v = label_value(&s.labels, k).unwrap_or(NO_LABELS);
                    locs.named(&format!("[{k}={v}]"))
                })
                .collect();
            s.stack.splice(0..0, roots);
        }
        p.locations = locs.locations;
        p
    }

    pub fn objects(&self) -> u64 {
        self.samples.iter().map(|s| s.objects).sum()
    }

    pub fn title(&self) -> String {
        format!(
            "memtrace {} lens: {} ({}, {:.1} s)",
            self.lens, self.target, self.unit, self.duration_secs
        )
    }
}

/// Human-readable byte count.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// A profile of name-only stacks, for tests.
#[cfg(test)]
pub(crate) fn profile(lens: Lens, stacks: &[(&[&str], u64, u64)]) -> Profile {
    let owned: Vec<(Vec<String>, u64, u64)> = stacks
        .iter()
        .map(|(f, v, o)| (f.iter().map(|s| s.to_string()).collect(), *v, *o))
        .collect();
    Profile::from_names(
        lens,
        owned.iter().map(|(f, v, o)| (f.as_slice(), *v, *o)),
        1.0,
        "t".into(),
    )
}

/// Frames of the Go runtime and syscall plumbing, which rarely explain who
/// asked for memory.
pub fn is_plumbing(frame: &str) -> bool {
    [
        "runtime.",
        "syscall.",
        "internal/",
        "golang.org/x/sys/unix.",
    ]
    .iter()
    .any(|p| frame.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_sorts() {
        let p = profile(
            Lens::Mmap,
            &[
                (&["a", "b"], 10, 1),
                (&["a", "c"], 30, 1),
                (&["a", "b"], 25, 2),
                (&["z"], 0, 0),
            ],
        );
        assert_eq!(p.samples.len(), 2);
        let named = p.named(FrameMode::Func);
        assert_eq!(named[0].names, vec!["a", "b"]);
        assert_eq!((named[0].value, named[0].objects), (35, 3));
        assert_eq!(p.total(), 65);
        assert_eq!(p.objects(), 4);
    }

    #[test]
    fn two_lines_of_one_function_merge_by_function_not_by_line() {
        let frame = |line| Frame {
            function: "main.f".into(),
            file: "/src/app/main.go".into(),
            line,
            start_line: 10,
            inlined: false,
        };
        let loc = |addr, line| Location {
            address: addr,
            mapping: None,
            frames: vec![frame(line)],
        };
        let p = Profile::new(
            Lens::AllocExact,
            vec![loc(0x401000, 12), loc(0x401010, 14)],
            Vec::new(),
            [
                Sample {
                    stack: vec![0],
                    value: 64,
                    objects: 1,
                    ..Sample::default()
                },
                Sample {
                    stack: vec![1],
                    value: 32,
                    objects: 1,
                    ..Sample::default()
                },
            ],
            1.0,
            "t".into(),
        );
        let by_func = p.named(FrameMode::Func);
        assert_eq!(by_func.len(), 1);
        assert_eq!(by_func[0].value, 96);
        assert_eq!(by_func[0].frames[0].line, 12, "the larger site's position");
        let by_line = p.named(FrameMode::Line);
        assert_eq!(by_line.len(), 2);
        assert_eq!(by_line[0].names, vec!["main.f main.go:12"]);
        assert_eq!(by_line[1].names, vec!["main.f main.go:14"]);
    }
}
