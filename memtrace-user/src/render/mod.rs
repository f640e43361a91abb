//! Output formats. Every renderer takes a [`Profile`] (symbolized, merged
//! stacks) and returns bytes; nothing here touches the kernel or the target.

use crate::lens::Lens;

pub mod diff;
pub mod folded;
pub mod pprof;
pub mod summary;
pub mod svg;
pub mod timeline;

/// One merged stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Frame names, root first.
    pub frames: Vec<String>,
    pub value: u64,
    pub objects: u64,
}

/// A lens's result, ready to render.
#[derive(Clone, Debug)]
pub struct Profile {
    pub lens: Lens,
    /// `bytes` or `goroutines`.
    pub unit: &'static str,
    /// Whether `objects` is meaningful (allocation lenses).
    pub has_objects: bool,
    /// Sorted by value, descending, then by frames.
    pub samples: Vec<Sample>,
    pub duration_secs: f64,
    /// Human description of what was traced, for titles.
    pub target: String,
}

impl Profile {
    /// Builds a profile of `lens`, merging samples with identical frames.
    pub fn new(
        lens: Lens,
        samples: impl IntoIterator<Item = Sample>,
        duration_secs: f64,
        target: String,
    ) -> Self {
        let mut merged: std::collections::HashMap<Vec<String>, (u64, u64)> = Default::default();
        for s in samples {
            let e = merged.entry(s.frames).or_default();
            e.0 += s.value;
            e.1 += s.objects;
        }
        let mut samples: Vec<Sample> = merged
            .into_iter()
            .filter(|(_, (v, _))| *v > 0)
            .map(|(frames, (value, objects))| Sample {
                frames,
                value,
                objects,
            })
            .collect();
        samples.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.frames.cmp(&b.frames)));
        Self {
            lens,
            unit: lens.unit(),
            has_objects: lens.spec().has_objects,
            samples,
            duration_secs,
            target,
        }
    }

    pub fn total(&self) -> u64 {
        self.samples.iter().map(|s| s.value).sum()
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

#[cfg(test)]
pub(crate) fn sample(frames: &[&str], value: u64, objects: u64) -> Sample {
    Sample {
        frames: frames.iter().map(|s| s.to_string()).collect(),
        value,
        objects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_sorts() {
        let p = Profile::new(
            crate::lens::Lens::Mmap,
            [
                sample(&["a", "b"], 10, 1),
                sample(&["a", "c"], 30, 1),
                sample(&["a", "b"], 25, 2),
                sample(&["z"], 0, 0),
            ],
            1.0,
            "t".into(),
        );
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0], sample(&["a", "b"], 35, 3));
        assert_eq!(p.total(), 65);
        assert_eq!(p.objects(), 4);
    }
}
