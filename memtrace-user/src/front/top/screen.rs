//! The `memtrace top` screen: a [`View`] drawn with ratatui. Pure (it
//! draws into any backend), so it is tested on ratatui's test backend; the
//! terminal itself is `cli::top`'s.

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row as TableRow, Table, TableState};

use crate::front::top::{self, View};
use crate::model::profile::human_bytes;

/// Draws `view` with row `selected` highlighted and `status` at the foot.
pub fn draw(f: &mut ratatui::Frame<'_>, view: &View, selected: usize, status: &str) {
    let [head, table, stacks, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length((view.rows.len() as u16 + 3).min(12)),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let lenses: Vec<String> = view
        .lenses
        .iter()
        .map(|l| {
            if *l == view.lens {
                format!("[{}]", l.name())
            } else {
                l.name().to_string()
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "memtrace top  {:.0} s  lens {} (Tab)  every {} s  {} events, {} dropped  q quit · s save · ↑↓ select · l {} frames",
            view.elapsed,
            lenses.join(" "),
            view.interval,
            view.events,
            view.drops,
            if view.leaf_frames { "own" } else { "leaf" }
        )))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        head,
    );
    let header = TableRow::new(
        [
            "PID",
            "EXE",
            "RSS",
            "TREND",
            "RATE",
            "NET",
            "GOROUTINES",
            "GC",
            "CGROUP LIMIT",
        ]
        .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<TableRow<'_>> = view
        .rows
        .iter()
        .map(|r| {
            let name = match &r.exited {
                Some(e) => format!("{} [{e}]", r.name),
                None => r.name.clone(),
            };
            TableRow::new(vec![
                Cell::from(r.pid.to_string()),
                Cell::from(name),
                Cell::from(human_bytes(r.rss())),
                Cell::from(top::sparkline(&r.history, 24)),
                Cell::from(top::rate(r.rate)),
                Cell::from(top::signed_bytes(r.net)),
                Cell::from(r.goroutines.map_or("-".into(), |g| g.to_string())),
                Cell::from(top::gc(r)),
                Cell::from(r.limit.clone().unwrap_or_else(|| "-".into())),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Min(12),
        Constraint::Length(11),
        Constraint::Length(25),
        Constraint::Length(14),
        Constraint::Length(12),
        Constraint::Length(11),
        Constraint::Length(24),
        Constraint::Min(16),
    ];
    let mut state = TableState::default().with_selected(Some(selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" Processes "))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        table,
        &mut state,
    );
    let (title, lines) = match view.rows.get(selected) {
        Some(r) => (
            format!(
                " Top {} stacks since start: pid {} ({}), total {} ",
                view.lens.name(),
                r.pid,
                r.name,
                top::amount(view.lens, r.total)
            ),
            if r.top.is_empty() {
                vec![Line::from("  nothing yet")]
            } else {
                r.top
                    .iter()
                    .map(|t| {
                        Line::from(format!(
                            "{:>11} {:>6.1}%  {}",
                            top::amount(view.lens, t.value),
                            t.share * 100.0,
                            t.place()
                        ))
                    })
                    .collect()
            },
        ),
        None => (" Top stacks ".to_string(), vec![]),
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        stacks,
    );
    f.render_widget(Paragraph::new(Line::from(status.to_string())), foot);
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::front::top::Row;
    use crate::model::lens::Lens;

    #[test]
    fn draws_the_header_the_rows_and_the_selected_process_stacks() {
        let row = Row {
            pid: 4242,
            name: "leaky".into(),
            history: vec![64 << 20],
            ..Row::default()
        };
        let view = View {
            lens: Lens::Rss,
            lenses: vec![Lens::Rss, Lens::Goroutines],
            interval: 2.0,
            elapsed: 12.0,
            events: 1000,
            drops: 3,
            leaf_frames: false,
            rows: vec![row],
        };
        let mut term = Terminal::new(TestBackend::new(140, 20)).unwrap();
        term.draw(|f| draw(f, &view, 0, "saved nothing")).unwrap();
        let text: String = term
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for want in [
            "[rss] goroutines",
            "3 dropped",
            "PID",
            "4242",
            "leaky",
            "64.0 MiB",
            "pid 4242 (leaky)",
            "saved nothing",
        ] {
            assert!(text.contains(want), "{want:?} not on the screen:\n{text}");
        }
    }
}
