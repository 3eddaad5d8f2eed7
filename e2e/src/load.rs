//! Steady HTTP/3 load on many hosts, and the small tools around it that the route
//! propagation test (`tests/route_churn.rs`) and the benchmark (`bench/routes/main.rs`)
//! share: one GET with a deadline, API writes a few at a time, quantiles of samples.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::{StreamExt, TryStreamExt};
use quic_ingress::client::{H3Client, RequestBody, TrustOptions};
use tokio::sync::Semaphore;

/// Per request, so a lost packet or a hung stream cannot outlast a test's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one load connection may have in flight: what a stalled connection can pile up.
const MAX_IN_FLIGHT: usize = 256;
/// Failures kept with their host and time, for the report of a failing run.
const KEPT_FAILURES: usize = 20;

/// `GET https://HOST/PATH` on `client`: the status and the `x-backend` header (the demo
/// backend that answered), the body read whole; fails after [`REQUEST_TIMEOUT`].
pub async fn get(client: &H3Client, host: &str, path: &str) -> anyhow::Result<(u16, Option<String>)> {
    let fut = async {
        let req = http::Request::get(format!("https://{host}{path}")).body(())?;
        let resp = client.request(req, RequestBody::Empty).await?;
        let status = resp.status.as_u16();
        let backend = resp.headers.get("x-backend").and_then(|v| v.to_str().ok()).map(str::to_string);
        resp.bytes().await?;
        Ok::<_, anyhow::Error>((status, backend))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut).await.map_err(|_| anyhow!("timed out after {REQUEST_TIMEOUT:?}"))?
}

/// Runs `f` for every item, `writers` at a time; fails on the first error.
pub async fn bulk<I, F, Fut>(writers: usize, items: I, f: F) -> anyhow::Result<()>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(items).map(f).buffer_unordered(writers.max(1)).try_collect::<Vec<()>>().await?;
    Ok(())
}

/// The `q` quantile (nearest rank) of sorted samples; zero for none.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The 1-, 5- and 15-minute load averages of the machine, for reports.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// === Load ===

/// How a [`Load`] runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// HTTP/3 connections, each with its own pacing: the concurrent requesters.
    pub connections: usize,
    /// Requests per second over all connections (each sends its share on a fixed tick,
    /// whether or not earlier answers came back, up to 256 in flight).
    pub rate: u64,
    /// Requests sent at most; the load ends by itself after them.
    pub max_requests: u64,
    /// The load ends by itself after this long.
    pub max_duration: Duration,
    /// The path requested on every host.
    pub path: String,
}

impl LoadOptions {
    pub fn new(connections: usize, rate: u64) -> Self {
        LoadOptions {
            connections,
            rate,
            max_requests: u64::MAX,
            max_duration: Duration::from_secs(3600),
            path: "/".into(),
        }
    }
}

/// What the load saw.
#[derive(Default, Debug, Clone)]
pub struct LoadCounts {
    /// 2xx answers.
    pub ok: u64,
    /// Other answers, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer (transport errors, timeouts), by error.
    pub errors: BTreeMap<String, u64>,
    /// The first failures, with host and time since the load started.
    pub first_failures: Vec<String>,
}

impl LoadCounts {
    /// Answers that were not 2xx.
    pub fn not_2xx(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests without an answer.
    pub fn transport_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn failed(&self) -> u64 {
        self.not_2xx() + self.transport_errors()
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed()
    }

    fn record(&mut self, host: &str, at: Duration, outcome: Result<u16, String>) {
        let failure = match outcome {
            Ok(s) if (200..300).contains(&s) => {
                self.ok += 1;
                return;
            }
            Ok(s) => {
                *self.statuses.entry(s).or_default() += 1;
                format!("{s}")
            }
            Err(e) => {
                let line = format!("error: {e}");
                *self.errors.entry(e).or_default() += 1;
                line
            }
        };
        if self.first_failures.len() < KEPT_FAILURES {
            self.first_failures.push(format!("{host} at {:.0} ms: {failure}", ms(at)));
        }
    }
}

/// How a load ended.
#[derive(Debug)]
pub struct LoadReport {
    /// Since the last [`Load::take`].
    pub counts: LoadCounts,
    /// Answers and errors per second over the whole run.
    pub rate: f64,
    /// Requests sent over the whole run.
    pub sent: u64,
    pub elapsed: Duration,
    /// Whether the load ended by itself (`max_requests` or `max_duration`) before it was
    /// stopped: then it did not cover everything up to the stop.
    pub ended_early: bool,
}

/// A steady HTTP/3 load on `hosts` (spread over them in a fixed scattered order), every
/// answer that is not 2xx and every request without an answer counted. Bounded in count
/// and time by its [`LoadOptions`].
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Answers and errors since the start, never reset (for the rate).
    done: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    counts: Arc<std::sync::Mutex<LoadCounts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    opts: LoadOptions,
}

impl Load {
    /// Connects every requester (SNI `load<N>.example.com`, any certificate accepted) and
    /// starts them.
    pub async fn start(addr: SocketAddr, hosts: Arc<Vec<String>>, opts: LoadOptions) -> anyhow::Result<Load> {
        anyhow::ensure!(!hosts.is_empty() && opts.connections > 0 && opts.rate > 0, "a load needs hosts and a rate");
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(std::sync::Mutex::new(LoadCounts::default()));
        let trust = TrustOptions { insecure: true, ca_file: None };
        let per_conn = (opts.rate as f64 / opts.connections as f64).max(1.0);
        let (sent, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut clients = Vec::new();
        for c in 0..opts.connections {
            clients.push(H3Client::connect(addr, &format!("load{c}.example.com"), &trust).await?);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in clients {
            let (stop, counts, hosts, sent, done) =
                (stop.clone(), counts.clone(), hosts.clone(), sent.clone(), done.clone());
            let (path, max_requests, max_duration) = (opts.path.clone(), opts.max_requests, opts.max_duration);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
                while !stop.load(Ordering::Relaxed) && started.elapsed() < max_duration {
                    tick.tick().await;
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                        c.record("-", started.elapsed(), Err(format!("client overloaded ({MAX_IN_FLIGHT} in flight)")));
                        continue;
                    };
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= max_requests {
                        sent.fetch_sub(1, Ordering::Relaxed);
                        break;
                    }
                    let host = hosts[(n as usize).wrapping_mul(7919) % hosts.len()].clone();
                    let (client, counts, done, path) = (client.clone(), counts.clone(), done.clone(), path.clone());
                    tokio::spawn(async move {
                        let outcome = get(&client, &host, &path).await.map(|(s, _)| s).map_err(|e| format!("{e:#}"));
                        done.fetch_add(1, Ordering::Relaxed);
                        counts.lock().unwrap_or_else(|p| p.into_inner()).record(&host, started.elapsed(), outcome);
                        drop(permit);
                    });
                }
                // Every request has its own deadline, so its permit comes back by then.
                let all = MAX_IN_FLIGHT as u32;
                let _ =
                    tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), in_flight.acquire_many(all)).await;
            }));
        }
        Ok(Load { stop, done, sent, counts, tasks, started, opts })
    }

    /// The counts so far, and resets them.
    pub fn take(&self) -> LoadCounts {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Answers and errors so far (never reset).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Whether the load ended by itself (see [`LoadReport::ended_early`]).
    pub fn ended(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
            || self.started.elapsed() >= self.opts.max_duration
            || self.sent.load(Ordering::Relaxed) >= self.opts.max_requests
    }

    /// Stops sending, waits for the answers still due, and reports.
    pub async fn stop(mut self) -> LoadReport {
        let ended_early = self.ended();
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let done = self.done.load(Ordering::Relaxed);
        LoadReport {
            counts: self.take(),
            rate: done as f64 / elapsed.as_secs_f64().max(0.001),
            sent: self.sent.load(Ordering::Relaxed),
            elapsed,
            ended_early,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        let samples = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&ms(&[7]), 0.99), Duration::from_millis(7));
        assert_eq!(quantile(&ms(&[1, 2, 3]), 0.0), Duration::from_millis(1), "rank is at least 1");
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn counts_tell_statuses_from_errors_and_keep_the_first_failures() {
        let mut c = LoadCounts::default();
        c.record("a", Duration::ZERO, Ok(200));
        c.record("a", Duration::ZERO, Ok(204));
        c.record("b", Duration::from_millis(12), Ok(404));
        c.record("c", Duration::from_millis(13), Err("timed out".into()));
        assert_eq!((c.ok, c.not_2xx(), c.transport_errors(), c.total()), (2, 1, 1, 4));
        assert_eq!(c.first_failures, ["b at 12 ms: 404", "c at 13 ms: error: timed out"]);
        for _ in 0..30 {
            c.record("d", Duration::ZERO, Ok(503));
        }
        assert_eq!(c.first_failures.len(), KEPT_FAILURES);
        assert_eq!(c.statuses.get(&503), Some(&30));
    }
}
