//! Brendan Gregg's folded format: `root;...;leaf VALUE` per line.

use super::Profile;

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

pub fn render(p: &Profile) -> String {
    let mut out = String::new();
    for s in &p.samples {
        out.push_str(&format!("{} {}\n", stack(&s.frames), s.value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{sample, Profile};
    use super::*;

    #[test]
    fn renders_lines() {
        let p = Profile::new(
            crate::lens::Lens::AllocExact,
            [
                sample(&["main.main", "main.(*T).add;x"], 64, 1),
                sample(&[], 1, 1),
            ],
            1.0,
            "t".into(),
        );
        assert_eq!(render(&p), "main.main;main.(*T).add:x 64\n[no frames] 1\n");
    }
}
