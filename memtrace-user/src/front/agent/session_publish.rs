//! What a window of one process sends out: its rendered profiles and
//! figures into the shared state (the HTTP API, /metrics), a push request
//! for Pyroscope and an OTLP export. A child of `session`, so it sees the
//! policy's state.

use std::sync::Arc;

use super::{unix_now, AgentPolicy};
use crate::front::agent::{Rendered, TOP_SERIES};
use crate::model::lens::Lens;
use crate::model::profile::FrameMode;
use crate::model::report::Report;
use crate::render::otlp::Origin;

impl AgentPolicy {
    /// Puts a window's rendered profiles and figures into the shared state.
    pub(super) fn publish(&self, pid: u32, report: &Report) {
        let mut rendered = Vec::new();
        for p in &report.profiles {
            let r = (|| -> Result<Rendered, Box<dyn std::error::Error>> {
                let split = p.split_by_labels(&report.split_by);
                Ok(Rendered {
                    svg: crate::render::svg::render(&split, FrameMode::Func)?,
                    folded: crate::render::folded::render(&split, FrameMode::Func),
                    pprof: crate::render::pprof::render(p)?,
                })
            })();
            match r {
                Ok(r) => rendered.push((p.lens.name(), Arc::new(r))),
                Err(e) => eprintln!("memtrace: agent: rendering pid {pid}: {e}"),
            }
        }
        if let Some(pusher) = &self.pusher {
            pusher.push(self.push_request(pid, &rendered).body());
        }
        if let Some(otlp) = &self.otlp {
            otlp.push(self.otlp_request(pid, report));
        }
        let lens = |l: Lens| report.summary.lenses.get(l.name());
        let mut top: Vec<(String, u64)> = lens(Lens::Rss)
            .map(|s| {
                s.top
                    .iter()
                    .map(|t| (t.stack.last().cloned().unwrap_or_default(), t.value))
                    .collect()
            })
            .unwrap_or_default();
        top.truncate(TOP_SERIES);
        let mut label_growth: Vec<(String, String, u64)> = lens(Lens::Rss)
            .map(|s| {
                s.by_label
                    .iter()
                    .filter(|(k, _)| self.metric_label_keys.contains(k))
                    .flat_map(|(k, values)| {
                        values.iter().map(move |(v, n)| (k.clone(), v.clone(), *n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        label_growth.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        label_growth.truncate(TOP_SERIES);
        let page = crate::render::report::html_page(report, FrameMode::Line)
            .map_err(|e| eprintln!("memtrace: agent: the page of pid {pid}: {e}"))
            .ok();
        let mut shared = self.shared.lock().expect("agent state");
        for (lens, r) in rendered {
            shared.profiles.insert((pid, lens), r);
        }
        if let Some(page) = page {
            shared.pages.insert(pid, Arc::new(page));
        }
        if let Some(p) = shared.procs.get_mut(&pid) {
            p.growth_bytes = lens(Lens::Rss).map_or(0, |s| s.total);
            p.label_growth = label_growth;
            p.net_growth_bytes = lens(Lens::Rss)
                .and_then(|s| Some(s.extra.as_ref()?.rss()?.net_growth))
                .unwrap_or(0);
            // The last GC cycle of the window, if there was one.
            if let Some(c) = report.summary.gc.last() {
                let v = |v: u64| Some(v).filter(|v| *v > 0);
                p.heap_marked = v(c.heap_marked).or(p.heap_marked);
                p.heap_goal = v(c.heap_goal).or(p.heap_goal);
            }
            p.top = top;
            p.goroutines = lens(Lens::Goroutines).map_or(0, |s| s.total);
            p.gc_cycles += report.summary.gc.cycles;
            p.window_end = Some(unix_now());
        }
    }

    /// One window of `pid` for Pyroscope: a series per lens, labelled.
    pub(super) fn push_request(
        &self,
        pid: u32,
        rendered: &[(&str, Arc<Rendered>)],
    ) -> crate::front::push::pyroscope::PushRequest {
        let state = self.proc_state(pid);
        let state = state.unwrap_or_default();
        let exe_name = state
            .exe
            .rsplit('/')
            .next()
            .unwrap_or(&state.exe)
            .to_string();
        let container = state.pod.as_ref().and_then(|p| {
            let id = state.labels.container_id.as_ref()?;
            p.containers.get(id).cloned()
        });
        let service = state
            .pod
            .as_ref()
            .and_then(|p| p.app().map(str::to_string))
            .or_else(|| container.clone())
            .unwrap_or_else(|| exe_name.trim_end_matches(" (deleted)").to_string());
        let mut common = vec![
            ("service_name".to_string(), service),
            ("node".to_string(), self.node.clone()),
            ("pid".to_string(), pid.to_string()),
            ("go_version".to_string(), state.go_version.clone()),
        ];
        if let Some(p) = &state.pod {
            common.push(("namespace".into(), p.namespace.clone()));
            common.push(("pod".into(), p.name.clone()));
        }
        if let Some(c) = container {
            common.push(("container".into(), c));
        }
        crate::front::push::pyroscope::PushRequest {
            series: rendered
                .iter()
                .map(|(lens, r)| {
                    let mut labels = vec![("__name__".to_string(), format!("memtrace_{lens}"))];
                    labels.extend(common.iter().cloned());
                    crate::front::push::pyroscope::series(&labels, r.pprof.clone())
                })
                .collect(),
        }
    }

    /// One window of `pid` as an OTLP export, encoded: the process's
    /// resource (pod, container, node) and a profile per lens and sample
    /// type.
    fn otlp_request(&self, pid: u32, report: &Report) -> Vec<u8> {
        let state = self.proc_state(pid).unwrap_or_default();
        let mut origin = report
            .summary
            .targets
            .first()
            .map(Origin::of_target)
            .unwrap_or_default();
        origin.pid = Some(pid);
        origin.node = Some(self.node.clone());
        origin.host = crate::render::otlp::host_name();
        if let Some(p) = &state.pod {
            origin.pod_name = Some(p.name.clone());
            origin.namespace = Some(p.namespace.clone());
            origin.service = p.app().map(str::to_string);
        }
        origin.container_id = origin.container_id.or(state.labels.container_id);
        let req = crate::render::otlp::request(&[(origin, &report.profiles)]);
        crate::front::push::otlp::body(&req)
    }
}
