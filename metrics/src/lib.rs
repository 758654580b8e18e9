//! Prometheus metrics for every Tessera daemon: counters, gauges and
//! histograms on atomics (cheap from any thread or executor), rendered in
//! the text exposition format (version 0.0.4), and served by a small HTTP
//! endpoint on a thread of its own (`--metrics ADDR`), so that a scrape
//! never runs on a storage or raft executor.
//!
//! Invariants:
//! - one family per name: every child of a name has the same help and type,
//!   and its labels are distinct (registering the same name and labels
//!   again returns the existing metric);
//! - histogram buckets are cumulative and end with `+Inf` = the count;
//! - the endpoint reads at most [`REQUEST_MAX_BYTES`] of a request, waits at
//!   most [`REQUEST_TIMEOUT`] for it, and serves one connection at a time
//!   (a scrape is small; a slow client cannot hold more than one thread).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The largest request the endpoint reads.
pub const REQUEST_MAX_BYTES: usize = 8 << 10;
/// How long the endpoint waits for a request or for the client to read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Latency buckets in seconds: 100 µs to 10 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

type Labels = Vec<(String, String)>;

/// A counter: only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Mirrors a monotonic count kept elsewhere (an engine's totals): the
    /// counter becomes `v` unless it is already higher (it never goes down).
    pub fn mirror(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

/// A gauge: any value (an f64 kept as bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A histogram of seconds (or any unit) with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for above the last bound.
    counts: Vec<AtomicU64>,
    /// Sum in nanounits (integer, so it can be atomic).
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(
            (v * 1e9).min(u64::MAX as f64 / 2.0) as u64,
            Ordering::Relaxed,
        );
    }
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64())
    }
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Clone)]
enum Kind {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

impl Kind {
    fn type_name(&self) -> &'static str {
        match self {
            Kind::Counter(_) => "counter",
            Kind::Gauge(_) => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

struct Family {
    help: String,
    children: Vec<(Labels, Kind)>,
}

/// A set of metric families.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<String, Family>>,
}

fn labels_of(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    fn get_or_add(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Kind,
        pick: impl Fn(&Kind) -> Option<Kind>,
    ) -> Kind {
        let labels = labels_of(labels);
        let mut f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = f.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            children: Vec::new(),
        });
        if let Some((_, k)) = fam.children.iter().find(|(l, _)| *l == labels) {
            if let Some(k) = pick(k) {
                return k;
            }
        }
        let k = make();
        let out = k.clone();
        // A second type under one name would break the exposition: the
        // family keeps its first type; a mismatched one is still handed out
        // but not rendered.
        if fam
            .children
            .iter()
            .all(|(_, c)| c.type_name() == k.type_name())
        {
            fam.children.push((labels, k));
        } else {
            tracing::error!(
                name,
                "metric registered with two types; the second is not exported"
            );
        }
        out
    }

    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Counter> {
        match self.get_or_add(
            name,
            help,
            labels,
            || Kind::Counter(Arc::default()),
            |k| match k {
                Kind::Counter(c) => Some(Kind::Counter(c.clone())),
                _ => None,
            },
        ) {
            Kind::Counter(c) => c,
            _ => Arc::default(),
        }
    }

    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Gauge> {
        match self.get_or_add(
            name,
            help,
            labels,
            || Kind::Gauge(Arc::default()),
            |k| match k {
                Kind::Gauge(c) => Some(Kind::Gauge(c.clone())),
                _ => None,
            },
        ) {
            Kind::Gauge(c) => c,
            _ => Arc::default(),
        }
    }

    /// A histogram with [`LATENCY_BUCKETS_SECONDS`].
    pub fn histogram(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Arc<Histogram> {
        match self.get_or_add(
            name,
            help,
            labels,
            || Kind::Histogram(Arc::new(Histogram::new(LATENCY_BUCKETS_SECONDS))),
            |k| match k {
                Kind::Histogram(c) => Some(Kind::Histogram(c.clone())),
                _ => None,
            },
        ) {
            Kind::Histogram(c) => c,
            _ => Arc::new(Histogram::new(LATENCY_BUCKETS_SECONDS)),
        }
    }

    /// Every family in the text exposition format.
    pub fn render(&self) -> String {
        let f = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, fam) in f.iter() {
            let Some((_, first)) = fam.children.first() else {
                continue;
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&fam.help));
            let _ = writeln!(out, "# TYPE {name} {}", first.type_name());
            for (labels, k) in &fam.children {
                match k {
                    Kind::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", fmt_labels(labels, None), c.get());
                    }
                    Kind::Gauge(g) => {
                        let _ = writeln!(
                            out,
                            "{name}{} {}",
                            fmt_labels(labels, None),
                            fmt_f64(g.get())
                        );
                    }
                    Kind::Histogram(h) => {
                        let mut cum = 0u64;
                        for (i, b) in h.bounds.iter().enumerate() {
                            cum += h.counts[i].load(Ordering::Relaxed);
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cum}",
                                fmt_labels(labels, Some(&fmt_f64(*b)))
                            );
                        }
                        cum += h.counts[h.bounds.len()].load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cum}",
                            fmt_labels(labels, Some("+Inf"))
                        );
                        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            fmt_labels(labels, None),
                            fmt_f64(sum)
                        );
                        let _ = writeln!(out, "{name}_count{} {cum}", fmt_labels(labels, None));
                    }
                }
            }
        }
        out
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// Records one request of daemon `daemon`'s operation `op` that started
/// at `started` and ended with `result` ("ok" or an error kind), as
/// `tessera_DAEMON_requests_total{op,result}` and
/// `tessera_DAEMON_request_seconds{op}`.
///
/// On the request path: the metrics are looked up in the registry once per
/// thread and (daemon, op, result), then kept in a thread-local table, so a
/// request costs a hash lookup and two atomic adds — no lock, no
/// allocation.
pub fn observe_request(
    daemon: &'static str,
    op: &'static str,
    started: std::time::Instant,
    result: &'static str,
) {
    type Key = (&'static str, &'static str, &'static str);
    type Handles = std::collections::HashMap<Key, (Arc<Histogram>, Arc<Counter>)>;
    thread_local! {
        static CACHE: std::cell::RefCell<Handles> = Default::default();
    }
    let took = started.elapsed();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let (h, n) = c.entry((daemon, op, result)).or_insert_with(|| {
            let reg = global();
            (
                reg.histogram(
                    &format!("tessera_{daemon}_request_seconds"),
                    &format!("{daemon} request latency by operation, seconds."),
                    &[("op", op)],
                ),
                reg.counter(
                    &format!("tessera_{daemon}_requests_total"),
                    &format!("{daemon} requests by operation and result."),
                    &[("op", op), ("result", result)],
                ),
            )
        });
        h.observe_duration(took);
        n.inc();
    });
}

/// The process's registry.
pub fn global() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

/// Serves `GET /metrics` of the global registry on `addr` from a thread of
/// its own; returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    serve_registry(addr, global())
}

/// Serves `reg` (which must live for the process).
pub fn serve_registry(addr: SocketAddr, reg: &'static Registry) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let bound = l.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                let _ = s.set_read_timeout(Some(REQUEST_TIMEOUT));
                let _ = s.set_write_timeout(Some(REQUEST_TIMEOUT));
                let mut buf = vec![0u8; REQUEST_MAX_BYTES];
                let mut n = 0;
                while n < buf.len() {
                    match s.read(&mut buf[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, ctype, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET /metrics?") {
                    ("200 OK", "text/plain; version=0.0.4; charset=utf-8", reg.render())
                } else {
                    ("404 Not Found", "text/plain; charset=utf-8", "metrics are at GET /metrics\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body.as_bytes());
            }
        })?;
    Ok(bound)
}

/// Fetches `GET /metrics` from `addr` (a process's `--metrics` address) and
/// returns the exposition text; waits at most [`REQUEST_TIMEOUT`] per read.
/// For tests, benchmarks and tools that read another process's metrics.
pub fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_string(),
        None => text,
    })
}

/// The value of the sample `name{labels}` in exposition `text`, where
/// `labels` is written as rendered (e.g. `group="2"`; empty for none).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    proptest! {
        /// Whatever is observed, the rendering parses, counters read back,
        /// histogram buckets are cumulative and end at the count.
        #[test]
        fn renders_and_parses(adds in proptest::collection::vec(0u64..1000, 1..20),
                              obs in proptest::collection::vec(0.0f64..20.0, 0..200),
                              label in "[a-z0-9 _.:/-]{0,12}") {
            let r = Registry::default();
            let c = r.counter("t_ops_total", "ops \"done\"", &[("op", &label)]);
            let g = r.gauge("t_bytes", "bytes", &[]);
            let h = r.histogram("t_seconds", "latency", &[("op", "get")]);
            let mut sum = 0;
            for a in &adds { c.add(*a); sum += a; }
            g.set(sum as f64 / 2.0);
            for o in &obs { h.observe(*o); }
            let s = parse(&r.render());
            let got = s.samples.iter().find(|x| x.metric == "t_ops_total").unwrap();
            match got.value { prometheus_parse::Value::Counter(v) => prop_assert_eq!(v, sum as f64), ref v => prop_assert!(false, "{:?}", v) }
            prop_assert_eq!(got.labels.get("op"), Some(label.as_str()));
            let hist = s.samples.iter().find(|x| x.metric == "t_seconds").unwrap();
            match &hist.value {
                prometheus_parse::Value::Histogram(b) => {
                    let mut last = 0.0;
                    for x in b { prop_assert!(x.count >= last); last = x.count; }
                    prop_assert_eq!(last, obs.len() as f64);
                }
                v => prop_assert!(false, "{:?}", v),
            }
        }
    }

    /// Quotes, backslashes and newlines in label values and help are
    /// escaped as the text format says (the parser used above does not
    /// read escapes, so this is checked on the text).
    #[test]
    fn label_values_and_help_are_escaped() {
        let r = Registry::default();
        r.counter("e_total", "a \\ b\nc", &[("k", "q\"b\\n\nx")])
            .inc();
        let text = r.render();
        assert!(text.contains("# HELP e_total a \\\\ b\\nc\n"), "{text}");
        assert!(
            text.contains("e_total{k=\"q\\\"b\\\\n\\nx\"} 1\n"),
            "{text}"
        );
    }

    /// Requests recorded from several threads (each with its own cached
    /// handles) land in one counter and one histogram of the registry.
    #[test]
    fn observed_requests_from_threads_share_the_metrics() {
        let t0 = std::time::Instant::now();
        let hs: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        observe_request("unit", "get", t0, "ok");
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        observe_request("unit", "get", t0, "not_found");
        let reg = global();
        assert_eq!(
            reg.counter(
                "tessera_unit_requests_total",
                "",
                &[("op", "get"), ("result", "ok")]
            )
            .get(),
            15
        );
        assert_eq!(
            reg.counter(
                "tessera_unit_requests_total",
                "",
                &[("op", "get"), ("result", "not_found")]
            )
            .get(),
            1
        );
        assert_eq!(
            reg.histogram("tessera_unit_request_seconds", "", &[("op", "get")])
                .count(),
            16
        );
    }

    #[test]
    fn same_name_and_labels_is_the_same_metric() {
        let r = Registry::default();
        r.counter("x_total", "x", &[("a", "1")]).add(2);
        r.counter("x_total", "x", &[("a", "1")]).add(3);
        r.counter("x_total", "x", &[("a", "2")]).add(1);
        assert_eq!(r.counter("x_total", "x", &[("a", "1")]).get(), 5);
        let text = r.render();
        assert_eq!(text.matches("# TYPE x_total counter").count(), 1, "{text}");
    }

    #[test]
    fn the_endpoint_serves_metrics_and_refuses_other_paths() {
        static R: OnceLock<Registry> = OnceLock::new();
        let reg = R.get_or_init(Registry::default);
        reg.counter("served_total", "s", &[]).inc();
        let addr = serve_registry("127.0.0.1:0".parse().unwrap(), reg).unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("served_total 1"), "{ok}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
        // A client that sends nothing is dropped after the timeout and the
        // next one is served.
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        assert!(get("/metrics").starts_with("HTTP/1.1 200"));
    }

    /// What `serve_registry` serves, `scrape` fetches and `sample` reads
    /// back, labelled or not; an absent sample is `None`.
    #[test]
    fn scrape_and_sample_read_a_served_registry() {
        let reg: &'static Registry = Box::leak(Box::default());
        reg.counter("unit_total", "help", &[("log", "wal-log")])
            .add(7);
        reg.gauge("unit_gauge", "help", &[]).set(2.5);
        let addr = serve_registry("127.0.0.1:0".parse().unwrap(), reg).unwrap();
        let text = scrape(&addr.to_string()).unwrap();
        assert_eq!(sample(&text, "unit_total", "log=\"wal-log\""), Some(7.0));
        assert_eq!(sample(&text, "unit_gauge", ""), Some(2.5));
        assert_eq!(sample(&text, "unit_total", "log=\"log\""), None);
    }
}
