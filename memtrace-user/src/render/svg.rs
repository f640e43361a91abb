//! Flame graph SVG through inferno.

use inferno::flamegraph::{self, Options};

use super::folded;
use crate::model::profile::{FrameMode, Profile};

#[derive(Debug, thiserror::Error)]
#[error("cannot render flame graph: {0}")]
pub struct SvgError(String);

pub fn render(p: &Profile, mode: FrameMode) -> Result<Vec<u8>, SvgError> {
    render_with(p, mode, false)
}

/// A flame graph without its script (hover titles still work), for
/// inlining several into one HTML page without their scripts colliding.
pub fn render_static(p: &Profile, mode: FrameMode) -> Result<Vec<u8>, SvgError> {
    render_with(p, mode, true)
}

fn render_with(p: &Profile, mode: FrameMode, no_javascript: bool) -> Result<Vec<u8>, SvgError> {
    let folded = folded::render(p, mode);
    let mut opts = Options::default();
    opts.no_javascript = no_javascript;
    opts.title = p.title();
    opts.count_name = p.unit.to_string();
    let mut out = Vec::new();
    let lines: Vec<&str> = folded.lines().collect();
    if lines.is_empty() {
        // inferno refuses input without samples; say so in a plain SVG.
        return Ok(empty_svg(&opts.title).into_bytes());
    }
    flamegraph::from_lines(&mut opts, lines.iter().copied(), &mut out)
        .map_err(|e| SvgError(e.to_string()))?;
    Ok(out)
}

fn empty_svg(title: &str) -> String {
    let esc = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" height=\"80\" \
         xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"24\" text-anchor=\"middle\" \
         font-size=\"17\">{esc}</text><text x=\"600\" y=\"56\" text-anchor=\"middle\" \
         font-size=\"14\">no samples in this window</text></svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lens::Lens;
    use crate::model::profile::profile;

    #[test]
    fn svg_has_title_and_frames() {
        let mut p = profile(
            Lens::Mmap,
            &[(&["main.main", "main.mapOffHeap"], 1 << 20, 1)],
        );
        p.duration_secs = 2.5;
        p.target = "app (pid 42)".into();
        let svg = String::from_utf8(render(&p, FrameMode::Func).unwrap()).unwrap();
        assert!(svg.contains("memtrace mmap lens: app (pid 42) (bytes, 2.5 s)"));
        assert!(svg.contains("main.mapOffHeap"));
    }

    #[test]
    fn empty_profile_still_renders() {
        let p = profile(Lens::Mmap, &[]);
        let svg = String::from_utf8(render(&p, FrameMode::Func).unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("no samples"));
    }
}
