//! One run's measurements and the number it contributes to the verdict:
//! memory growth per second, or per request when requests are counted.

use serde::Serialize;

use super::stats::theil_sen;

/// What "memory" means for a gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Resident memory (VmRSS, every 100 ms).
    #[default]
    Rss,
    /// The Go heap's live bytes at each GC cycle.
    Heap,
    /// Bytes allocated (the runtime's sampled profile, every second).
    Alloc,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rss => "rss",
            Metric::Heap => "heap",
            Metric::Alloc => "alloc",
        }
    }

    /// In words, for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Metric::Rss => "resident memory growth",
            Metric::Heap => "live Go heap growth (after each GC)",
            Metric::Alloc => "allocation",
        }
    }
}

/// Where a run's request count comes from.
#[derive(Clone, Debug)]
pub enum Requests {
    /// The last number the first capture group of this pattern matched in
    /// the program's (or the load command's) output.
    Pattern(regex::Regex),
    /// A Prometheus counter: the sum of the series named `counter` at `url`.
    Counter { url: String, counter: String },
}

/// A `--per-request` argument that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestsError {
    #[error(
        "--per-request {0}: name the counter after a '#', e.g. http://127.0.0.1:8080/metrics#requests_total"
    )]
    NoCounter(String),
    #[error("--per-request {0:?} is not a valid pattern: {1}")]
    Pattern(String, String),
    #[error("--per-request {0:?} needs a capture group around the number, e.g. 'requests (\\d+)'")]
    NoGroup(String),
}

impl Requests {
    /// A URL (`http(s)://…#counter`) or a regular expression with a group.
    pub fn parse(s: &str) -> Result<Self, RequestsError> {
        if s.starts_with("http://") || s.starts_with("https://") {
            let (url, counter) = s
                .split_once('#')
                .filter(|(_, c)| !c.is_empty())
                .ok_or_else(|| RequestsError::NoCounter(s.into()))?;
            return Ok(Requests::Counter {
                url: url.into(),
                counter: counter.into(),
            });
        }
        let re =
            regex::Regex::new(s).map_err(|e| RequestsError::Pattern(s.into(), e.to_string()))?;
        if re.captures_len() < 2 {
            return Err(RequestsError::NoGroup(s.into()));
        }
        Ok(Requests::Pattern(re))
    }

    /// The count a line of output says, if it says one.
    pub fn from_line(re: &regex::Regex, line: &str) -> Option<f64> {
        re.captures(line)?.get(1)?.as_str().parse().ok()
    }
}

/// The sum of the samples of `counter` in a Prometheus text exposition.
pub fn counter_value(text: &str, counter: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(counter) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue; // another metric sharing the prefix
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next()?;
        *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
    }
    found
}

/// What one run measured, in seconds since it started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Samples {
    /// (t, bytes) of the metric.
    pub memory: Vec<(f64, f64)>,
    /// (t, requests so far).
    pub requests: Vec<(f64, f64)>,
}

/// The number a run contributes, and how it was found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunValue {
    /// Memory growth per unit (per request, or per second).
    pub value: f64,
    /// Memory growth per second.
    pub per_second: f64,
    /// Requests per second over the measured part, when counted.
    pub request_rate: Option<f64>,
    /// The measured part: [from, to] seconds.
    pub measured: [f64; 2],
    /// Memory samples in the measured part.
    pub points: usize,
}

/// Why a run gives no number.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SeriesError {
    #[error("only {0} {1} after the warm-up: run longer (--duration) or warm up less (--warmup)")]
    TooFew(usize, &'static str),
    #[error(
        "no request count was seen after the warm-up: check --per-request against the program's output"
    )]
    NoRequests,
    #[error("no requests were counted after the warm-up")]
    ZeroRequests,
}

/// The slope of a monotone counter between its first and last sample.
fn endpoints(v: &[(f64, f64)]) -> Option<f64> {
    let (a, b) = (v.first()?, v.last()?);
    (b.0 > a.0).then(|| (b.1 - a.1) / (b.0 - a.0))
}

/// The run's growth per second over the samples after `warmup` seconds
/// and, with `per_request`, per request (the growth rate over the request
/// rate). Memory that moves in steps (rss, heap) is fitted with Theil–Sen;
/// a cumulative count (alloc) and request counts go from their first to
/// their last sample.
pub fn value(
    s: &Samples,
    warmup: f64,
    per_request: bool,
    metric: Metric,
) -> Result<RunValue, SeriesError> {
    let after = |v: &[(f64, f64)]| -> Vec<(f64, f64)> {
        v.iter().filter(|(t, _)| *t >= warmup).copied().collect()
    };
    let mem = after(&s.memory);
    let what = match metric {
        Metric::Heap => "GC cycles (the heap metric needs runs that span several)",
        Metric::Alloc => "allocation samples (one a second)",
        Metric::Rss => "memory samples",
    };
    let min = if metric == Metric::Alloc { 2 } else { 3 };
    if mem.len() < min {
        return Err(SeriesError::TooFew(mem.len(), what));
    }
    let slope = if metric == Metric::Alloc {
        endpoints(&mem)
    } else {
        theil_sen(&mem)
    };
    let per_second = slope.ok_or(SeriesError::TooFew(mem.len(), what))?;
    let measured = [mem[0].0, mem[mem.len() - 1].0];
    let request_rate = if per_request {
        let req = after(&s.requests);
        let rate = endpoints(&req).ok_or(SeriesError::NoRequests)?;
        if rate <= 0.0 {
            return Err(SeriesError::ZeroRequests);
        }
        Some(rate)
    } else {
        None
    };
    Ok(RunValue {
        value: request_rate.map_or(per_second, |r| per_second / r),
        per_second,
        request_rate,
        measured,
        points: mem.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_and_per_request() {
        // 1 MB/s of growth after a jumpy first second, 500 requests/s.
        let memory: Vec<(f64, f64)> = (0..50)
            .map(|i| {
                let t = i as f64 * 0.1;
                (
                    t,
                    if t < 1.0 {
                        5e6 * t
                    } else {
                        5e6 + 1e6 * (t - 1.0)
                    },
                )
            })
            .collect();
        let requests: Vec<(f64, f64)> =
            (0..50).map(|i| (i as f64 * 0.1, 50.0 * i as f64)).collect();
        let s = Samples { memory, requests };
        let v = value(&s, 1.0, true, Metric::Rss).unwrap();
        assert!((v.per_second - 1e6).abs() < 1.0, "{v:?}");
        assert!((v.request_rate.unwrap() - 500.0).abs() < 1e-6);
        assert!((v.value - 2000.0).abs() < 0.1, "2 KB per request: {v:?}");
        assert_eq!(v.measured[0], 1.0);
        let per_s = value(&s, 1.0, false, Metric::Rss).unwrap();
        assert_eq!(per_s.value, per_s.per_second);
        let short = Samples {
            memory: vec![(0.0, 1.0), (0.1, 2.0)],
            requests: vec![],
        };
        assert!(matches!(
            value(&short, 0.0, false, Metric::Rss),
            Err(SeriesError::TooFew(2, _))
        ));
        // A cumulative count: its endpoints.
        let alloc = Samples {
            memory: vec![(1.0, 10.0), (2.0, 40.0), (3.0, 50.0)],
            requests: vec![],
        };
        assert_eq!(
            value(&alloc, 0.0, false, Metric::Alloc).unwrap().value,
            20.0
        );
        let silent = Samples {
            memory: s.memory.clone(),
            requests: vec![],
        };
        assert_eq!(
            value(&silent, 1.0, true, Metric::Rss),
            Err(SeriesError::NoRequests)
        );
    }

    #[test]
    fn request_sources() {
        let Requests::Pattern(re) = Requests::parse(r"requests (\d+)").unwrap() else {
            panic!("a pattern")
        };
        assert_eq!(Requests::from_line(&re, "requests 1405"), Some(1405.0));
        assert_eq!(Requests::from_line(&re, "heartbeat"), None);
        assert!(matches!(
            Requests::parse(r"requests \d+"),
            Err(RequestsError::NoGroup(_))
        ));
        assert!(matches!(
            Requests::parse(r"requests (\d+"),
            Err(RequestsError::Pattern(..))
        ));
        let Requests::Counter { url, counter } =
            Requests::parse("http://127.0.0.1:9/metrics#requests_total").unwrap()
        else {
            panic!("a counter")
        };
        assert_eq!(
            (url.as_str(), counter.as_str()),
            ("http://127.0.0.1:9/metrics", "requests_total")
        );
        assert!(matches!(
            Requests::parse("http://127.0.0.1:9/metrics"),
            Err(RequestsError::NoCounter(_))
        ));
        let text = "# TYPE requests_total counter\nrequests_total{code=\"200\"} 40\nrequests_total{code=\"500\"} 2\nrequests_total_created 7\nother 1\n";
        assert_eq!(counter_value(text, "requests_total"), Some(42.0));
        assert_eq!(
            counter_value("requests_total 5\n", "requests_total"),
            Some(5.0)
        );
        assert_eq!(counter_value(text, "missing"), None);
    }
}
