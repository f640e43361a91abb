//! Differential flame graphs: two folded profiles (before, after) into one
//! SVG where frames that grew are red and frames that shrank are blue,
//! as inferno's differential mode draws them (widths are the "after" sizes).

use std::collections::BTreeMap;

use inferno::{differential, flamegraph};

use super::folded;
use crate::model::profile::{FrameMode, Profile};

/// One stack's values in the two profiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub stack: String,
    pub before: u64,
    pub after: u64,
}

impl Delta {
    pub fn change(&self) -> i128 {
        i128::from(self.after) - i128::from(self.before)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("cannot compare the profiles: {0}")]
    Io(#[from] std::io::Error),
    #[error("both profiles are empty: nothing to compare")]
    Empty,
}

/// The merged folded lines (`stack before after`) of two folded profiles.
pub fn merge(before: &str, after: &str) -> Result<Vec<Delta>, DiffError> {
    let mut out = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut out,
    )?;
    let text = String::from_utf8_lossy(&out);
    let deltas: Vec<Delta> = text
        .lines()
        .filter_map(|l| {
            let (rest, after) = l.rsplit_once(' ')?;
            let (stack, before) = rest.rsplit_once(' ')?;
            Some(Delta {
                stack: stack.to_string(),
                before: before.parse().ok()?,
                after: after.parse().ok()?,
            })
        })
        .collect();
    if deltas.is_empty() {
        return Err(DiffError::Empty);
    }
    Ok(deltas)
}

/// The `rss-net` view of one window: every stack that grew (`grew`) and
/// every stack that released memory resident before the window
/// (`released`), as differential lines whose widths are bytes grown plus
/// bytes released, red where growth outweighs release and blue where
/// release does: a growth stack is `0 → g`, a release stack `2r → r`, so
/// after merging, each frame's change is exactly its net growth.
pub fn net(grew: &Profile, released: &Profile, mode: FrameMode) -> Vec<Delta> {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in grew.named(mode) {
        by.entry(folded::stack(&s.names)).or_default().1 += s.value;
    }
    for s in released.named(mode) {
        let e = by.entry(folded::stack(&s.names)).or_default();
        e.0 += 2 * s.value;
        e.1 += s.value;
    }
    by.into_iter()
        .map(|(stack, (before, after))| Delta {
            stack,
            before,
            after,
        })
        .collect()
}

/// The differential folded lines (`stack before after`) of `deltas`.
pub fn folded(deltas: &[Delta]) -> String {
    deltas
        .iter()
        .map(|d| format!("{} {} {}\n", d.stack, d.before, d.after))
        .collect()
}

/// Renders the differential flame graph of `deltas`.
pub fn render(deltas: &[Delta], title: &str, unit: &str) -> Result<Vec<u8>, DiffError> {
    render_with(deltas, title, unit, false)
}

/// [`render`] without the script, for inlining into a page.
pub fn render_static(deltas: &[Delta], title: &str, unit: &str) -> Result<Vec<u8>, DiffError> {
    render_with(deltas, title, unit, true)
}

fn render_with(
    deltas: &[Delta],
    title: &str,
    unit: &str,
    no_javascript: bool,
) -> Result<Vec<u8>, DiffError> {
    let lines: Vec<String> = deltas
        .iter()
        .map(|d| format!("{} {} {}", d.stack, d.before, d.after))
        .collect();
    let mut opts = flamegraph::Options::default();
    opts.no_javascript = no_javascript;
    opts.title = title.to_string();
    opts.count_name = unit.to_string();
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)
        .map_err(|e| DiffError::Io(std::io::Error::other(e.to_string())))?;
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "main;steady 100\nmain;shrinks 50\n";
    const AFTER: &str = "main;steady 100\nmain;grows 400\nmain;shrinks 10\n";

    #[test]
    fn merges_both_sides() {
        let mut d = merge(BEFORE, AFTER).unwrap();
        d.sort_by_key(|d| d.change());
        let by = |s: &str| d.iter().find(|x| x.stack == s).unwrap().clone();
        assert_eq!(by("main;grows").change(), 400);
        assert_eq!(by("main;shrinks").change(), -40);
        assert_eq!(by("main;steady").change(), 0);
        assert_eq!(d.first().unwrap().stack, "main;shrinks");
        assert_eq!(d.last().unwrap().stack, "main;grows");
    }

    #[test]
    fn colours_growth_red_and_shrinkage_blue() {
        let d = merge(BEFORE, AFTER).unwrap();
        let svg = String::from_utf8(render(&d, "diff", "bytes").unwrap()).unwrap();
        assert!(svg.contains("main;grows") || svg.contains("grows"));
        // inferno's differential palette: growth rgb(255,…), shrinkage …,255).
        let fills: Vec<&str> = svg
            .split("fill=\"rgb(")
            .skip(1)
            .filter_map(|s| s.split(')').next())
            .collect();
        assert!(fills.iter().any(|f| f.starts_with("255,")), "{fills:?}");
        assert!(fills.iter().any(|f| f.ends_with(",255")), "{fills:?}");
    }

    #[test]
    fn net_view_changes_by_net_growth() {
        use crate::model::lens::Lens;
        use crate::model::profile::profile;
        let grew = profile(
            Lens::Rss,
            &[(&["main", "cache"], 300, 1), (&["main", "both"], 50, 1)],
        );
        let released = profile(
            Lens::Rss,
            &[(&["main", "free"], 100, 1), (&["main", "both"], 80, 1)],
        );
        let d = net(&grew, &released, FrameMode::Func);
        let by = |s: &str| d.iter().find(|x| x.stack == s).unwrap().clone();
        assert_eq!(by("main;cache").change(), 300);
        assert_eq!(by("main;free").change(), -100);
        assert_eq!(by("main;both").change(), -30);
        assert_eq!(by("main;free").after, 100, "releases keep their width");
        let total: i128 = d.iter().map(Delta::change).sum();
        assert_eq!(total, 350 - 180, "the root's change is the net growth");
        assert!(folded(&d).contains("main;free 200 100\n"));
        let svg = String::from_utf8(render(&d, "rss-net", "bytes").unwrap()).unwrap();
        assert!(svg.contains("cache") && svg.contains("free"));
    }

    #[test]
    fn empty_inputs_are_an_error() {
        assert!(matches!(merge("", ""), Err(DiffError::Empty)));
    }
}
