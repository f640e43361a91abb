//! Everything a window produced: the profiles, the summary and the RSS
//! timelines. Built by the engine; written by `render::report`.

use super::profile::Profile;
use super::summary::{Point, Summary};

/// One process's RSS over the window, for `timeline.svg`.
pub struct Timeline {
    pub pid: u32,
    pub title: String,
    pub points: Vec<Point>,
}

/// Everything a window produced.
pub struct Report {
    /// One per lens, in lens order.
    pub profiles: Vec<Profile>,
    pub summary: Summary,
    /// With the rss lens: each process's RSS timeline.
    pub timelines: Vec<Timeline>,
    /// With the rss lens: the release, by the releasing stack, of memory
    /// resident before the window (the other half of `rss-net`).
    pub rss_released: Option<Profile>,
    /// Warnings for the terminal (e.g. a lens with nothing to show).
    pub warnings: Vec<String>,
    /// pprof label keys that split the flame graphs and folded stacks.
    pub split_by: Vec<String>,
}

impl Report {
    /// The two halves of the net differential graph: the growth profile of
    /// the lens that also measured a release, and that release.
    pub fn net(&self) -> Option<(&Profile, &Profile)> {
        let released = self.rss_released.as_ref()?;
        let grew = self.profiles.iter().find(|p| p.lens == released.lens)?;
        Some((grew, released))
    }
}
