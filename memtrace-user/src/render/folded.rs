//! Brendan Gregg's folded format: `root;...;leaf VALUE` per line.

use crate::model::profile::{FrameMode, Profile};

/// Frame names may not contain the separators of the format.
pub fn clean(frame: &str) -> String {
    frame.replace(';', ":").replace(['\n', '\r'], " ")
}

/// One stack as a folded line's first field (root first, `;`-separated).
pub fn stack(frames: &[String]) -> String {
    if frames.is_empty() {
        return "[no frames]".to_string();
    }
    frames
        .iter()
        .map(|f| clean(f))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn render(p: &Profile, mode: FrameMode) -> String {
    let mut out = String::new();
    for s in p.named(mode) {
        out.push_str(&format!("{} {}\n", stack(&s.names), s.value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lens::Lens;
    use crate::model::profile::profile;

    #[test]
    fn renders_lines() {
        let p = profile(
            Lens::AllocExact,
            &[(&["main.main", "main.(*T).add;x"], 64, 1), (&[], 1, 1)],
        );
        assert_eq!(
            render(&p, FrameMode::Func),
            "main.main;main.(*T).add:x 64\n[no frames] 1\n"
        );
    }
}
