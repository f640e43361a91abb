//! `timeline.svg`: a small line chart of RSS over the window.

use crate::model::summary::Point;
use std::fmt::Write as _;

/// A line: its name, colour and how to read it from a point.
type Series = (&'static str, &'static str, fn(&Point) -> u64);

const SERIES: [Series; 4] = [
    ("VmRSS", "#d62728", |p| p.vm_rss),
    ("RssAnon", "#1f77b4", |p| p.rss_anon),
    ("RssFile", "#2ca02c", |p| p.rss_file),
    ("RssShmem", "#9467bd", |p| p.rss_shmem),
];

const W: f64 = 900.0;
const H: f64 = 300.0;
/// Plot area: left margin for the value axis, right margin for the legend.
const LEFT: f64 = 90.0;
const RIGHT: f64 = 760.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 250.0;

/// Renders VmRSS and its parts over the window; `title` names the target.
pub fn render(title: &str, points: &[Point]) -> String {
    let tmax = points.iter().map(|p| p.t).fold(1.0, f64::max);
    let vmax = points.iter().map(|p| p.vm_rss).max().unwrap_or(0).max(1) as f64;
    let x = |t: f64| LEFT + (RIGHT - LEFT) * t / tmax;
    let y = |v: u64| BOTTOM - (BOTTOM - TOP) * v as f64 / vmax;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"{W}\" height=\"{H}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"Verdana\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        (LEFT + RIGHT) / 2.0,
        esc(title)
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\" stroke=\"#000\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{BOTTOM}\" stroke=\"#000\"/>\n\
         <text x=\"{LEFT}\" y=\"{}\" text-anchor=\"middle\">0 s</text>\n\
         <text x=\"{RIGHT}\" y=\"{}\" text-anchor=\"middle\">{tmax:.1} s</text>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} MiB</text>\n\
         <text x=\"{}\" y=\"{BOTTOM}\" text-anchor=\"end\">0</text>",
        BOTTOM + 16.0,
        BOTTOM + 16.0,
        LEFT - 6.0,
        TOP + 4.0,
        vmax / 1048576.0,
        LEFT - 6.0,
    );
    for (i, (name, colour, get)) in SERIES.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(get(p))))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"><title>{name}</title></polyline>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
            pts.join(" "),
            RIGHT + 16.0,
            TOP + 10.0 + 18.0 * i as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series() {
        let pts = [
            Point {
                t: 0.0,
                vm_rss: 10 << 20,
                rss_anon: 8 << 20,
                rss_file: 2 << 20,
                rss_shmem: 0,
            },
            Point {
                t: 1.0,
                vm_rss: 20 << 20,
                rss_anon: 18 << 20,
                rss_file: 2 << 20,
                rss_shmem: 0,
            },
        ];
        let svg = render("app (pid 1)", &pts);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("app (pid 1)") && svg.contains("20.0 MiB"));
        // The last VmRSS point is at the top of the plot area.
        assert!(svg.contains(&format!("{:.1},{:.1}", RIGHT, TOP)));
    }

    #[test]
    fn empty_is_valid() {
        assert!(render("t", &[]).contains("</svg>"));
    }
}
