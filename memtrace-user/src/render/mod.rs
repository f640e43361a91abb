//! Output formats. Every renderer takes a [`Profile`](crate::model::profile::Profile)
//! and returns bytes; `report` builds profiles from aggregated cells and
//! writes a window's files. Nothing here touches the kernel or the target.

pub mod diff;
pub mod folded;
pub mod html;
pub mod otlp;
pub mod pprof;
pub mod report;
pub mod svg;
pub mod timeline;
