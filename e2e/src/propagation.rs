//! Route propagation on the data plane: API writes (routes added, changed, removed) run a
//! few at a time while a prober polls, over HTTP/3, the host and path each write should
//! change, and times each from the start of its write to the first answer showing it.
//! Any answer that is neither what was served before the write nor what it should serve
//! after is kept as wrong (a transient 404 or 503 while the table is rebuilt, say).

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::LocalBoxFuture;
use quic_ingress::client::H3Client;
use tokio::sync::mpsc;

use crate::load::{REQUEST_TIMEOUT, get, ms};

/// Probe rounds start at most this often, so a few pending routes are not polled in a spin.
const ROUND_EVERY: Duration = Duration::from_millis(5);
/// Longest an API write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines kept of each kind of trouble.
const KEPT: usize = 20;

/// One answer of the data plane, as far as propagation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 from this demo backend (its `x-backend` header).
    Backend(String),
    /// 404: no route.
    NotFound,
}

impl Answer {
    fn matches(&self, status: u16, backend: Option<&str>) -> bool {
        match self {
            Answer::Backend(b) => status == 200 && backend == Some(b.as_str()),
            Answer::NotFound => status == 404,
        }
    }
}

/// What a write should change: `host` + `path` answered `before` until the write takes
/// effect, then `after`.
#[derive(Debug, Clone)]
pub struct Expect {
    /// What the write is (`add`, `remove`, `update`), for reports.
    pub what: &'static str,
    pub host: String,
    pub path: String,
    pub before: Answer,
    pub after: Answer,
}

impl Expect {
    /// A new route: 404, then 200 from `backend`.
    pub fn added(host: &str, path: &str, backend: &str) -> Self {
        Expect {
            what: "add",
            host: host.into(),
            path: path.into(),
            before: Answer::NotFound,
            after: Answer::Backend(backend.into()),
        }
    }

    /// A route removed: 200 from `backend`, then 404.
    pub fn removed(host: &str, path: &str, backend: &str) -> Self {
        Expect {
            what: "remove",
            host: host.into(),
            path: path.into(),
            before: Answer::Backend(backend.into()),
            after: Answer::NotFound,
        }
    }

    /// A route changed: 200 from `from`, then 200 from `to`.
    pub fn updated(host: &str, path: &str, from: &str, to: &str) -> Self {
        Expect {
            what: "update",
            host: host.into(),
            path: path.into(),
            before: Answer::Backend(from.into()),
            after: Answer::Backend(to.into()),
        }
    }
}

/// What one probe answer says about an expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The write has taken effect.
    Done,
    /// Still what was served before.
    Pending,
    /// Neither.
    Wrong(String),
}

/// Judges one answer (`status`, `x-backend`) against `e`.
pub fn judge(e: &Expect, status: u16, backend: Option<&str>) -> Verdict {
    if e.after.matches(status, backend) {
        Verdict::Done
    } else if e.before.matches(status, backend) {
        Verdict::Pending
    } else {
        Verdict::Wrong(format!("{status} from {}", backend.unwrap_or("no backend")))
    }
}

/// One API write and what it should change.
pub struct Write<'a> {
    pub expect: Expect,
    pub write: LocalBoxFuture<'a, anyhow::Result<()>>,
}

/// What a burst of writes showed.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the start of each write to the first answer showing it, by kind of write.
    pub latencies: Vec<(&'static str, Duration)>,
    /// Answers that were neither before nor after (the first [`KEPT`]), and how many.
    pub wrong: Vec<String>,
    pub wrong_count: usize,
    /// Probes without an answer (the first [`KEPT`]), and how many.
    pub errors: Vec<String>,
    pub error_count: usize,
    /// Writes whose effect was not seen within the deadline.
    pub late: Vec<String>,
    /// Probe requests sent.
    pub probes: u64,
}

impl Outcome {
    /// The latencies of writes of kind `what`, sorted.
    pub fn sorted(&self, what: &str) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.latencies.iter().filter(|(w, _)| *w == what).map(|(_, d)| *d).collect();
        v.sort();
        v
    }

    /// Adds another burst's outcome to this one.
    pub fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        keep(&mut self.wrong, other.wrong);
        keep(&mut self.errors, other.errors);
        self.wrong_count += other.wrong_count;
        self.error_count += other.error_count;
        self.late.extend(other.late);
        self.probes += other.probes;
    }
}

fn keep(into: &mut Vec<String>, from: Vec<String>) {
    let room = KEPT.saturating_sub(into.len());
    into.extend(from.into_iter().take(room));
}

/// A probe's status and `x-backend`.
type Answered = (u16, Option<String>);

struct Pending {
    expect: Expect,
    started: Instant,
}

/// Runs `writes`, `writers` at a time, while probing over `client` (up to `probes` requests
/// in flight) until each has taken effect or `deadline` has passed since its write started.
/// Fails only if a write fails; what the data plane answered is in the [`Outcome`].
pub async fn run(
    client: &H3Client,
    writers: usize,
    probes: usize,
    deadline: Duration,
    writes: Vec<Write<'_>>,
) -> anyhow::Result<Outcome> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let writing = async move {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(writes)
            .map(|w| {
                let tx = tx.clone();
                async move {
                    let what = format!("{} {}{}", w.expect.what, w.expect.host, w.expect.path);
                    // Probing starts with the write: the route may be served before the
                    // API server's answer is back.
                    let _ = tx.send(Pending { expect: w.expect, started: Instant::now() });
                    match tokio::time::timeout(WRITE_TIMEOUT, w.write).await {
                        Ok(r) => r.map_err(|e| e.context(what)),
                        Err(_) => Err(anyhow::anyhow!("{what}: the API write took over {WRITE_TIMEOUT:?}")),
                    }
                }
            })
            .buffer_unordered(writers.max(1))
            .collect()
            .await;
        drop(tx);
        results.into_iter().collect::<anyhow::Result<Vec<()>>>().map(drop)
    };
    let probing = async {
        let mut out = Outcome::default();
        let mut pending: Vec<Pending> = Vec::new();
        let mut writes_done = false;
        let mut round = tokio::time::interval(ROUND_EVERY);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            loop {
                match rx.try_recv() {
                    Ok(p) => pending.push(p),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        writes_done = true;
                        break;
                    }
                }
            }
            let now = Instant::now();
            pending.retain(|p| {
                let overdue = now.duration_since(p.started) > deadline;
                if overdue {
                    out.late.push(format!(
                        "{} {}{} not seen after {deadline:?}",
                        p.expect.what, p.expect.host, p.expect.path
                    ));
                }
                !overdue
            });
            if writes_done && pending.is_empty() {
                return out;
            }
            round.tick().await;
            let answers: Vec<(usize, anyhow::Result<Answered>, Instant)> =
                futures::stream::iter(pending.iter().enumerate())
                    .map(|(i, p)| async move {
                        let r = get(client, &p.expect.host, &p.expect.path).await;
                        (i, r, Instant::now())
                    })
                    .buffer_unordered(probes.max(1))
                    .collect()
                    .await;
            out.probes += answers.len() as u64;
            let mut done = vec![false; pending.len()];
            for (i, answer, at) in answers {
                let p = &pending[i];
                let since = at.duration_since(p.started);
                let line = |what: String| {
                    format!(
                        "{} {}{} {:.0} ms after its write: {what}",
                        p.expect.what,
                        p.expect.host,
                        p.expect.path,
                        ms(since)
                    )
                };
                match answer {
                    Ok((status, backend)) => match judge(&p.expect, status, backend.as_deref()) {
                        Verdict::Done => {
                            out.latencies.push((p.expect.what, since));
                            done[i] = true;
                        }
                        Verdict::Pending => {}
                        Verdict::Wrong(w) => {
                            out.wrong_count += 1;
                            keep(&mut out.wrong, vec![line(w)]);
                        }
                    },
                    Err(e) => {
                        out.error_count += 1;
                        keep(&mut out.errors, vec![line(format!("{e:#}"))]);
                    }
                }
            }
            let mut i = 0;
            pending.retain(|_| {
                i += 1;
                !done[i - 1]
            });
        }
    };
    // A probe round is bounded by the per-request timeout; the whole run by the deadline.
    let bound = WRITE_TIMEOUT + deadline + REQUEST_TIMEOUT * 2;
    let (written, outcome) = tokio::time::timeout(bound, async { tokio::join!(writing, probing) })
        .await
        .map_err(|_| anyhow::anyhow!("a burst of writes and probes took over {bound:?}"))?;
    written?;
    Ok(outcome)
}

/// `min / p50 / p99 / max` of sorted samples, in ms, for reports.
pub fn summary(sorted: &[Duration]) -> String {
    use crate::load::quantile;
    format!(
        "n={} min {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        sorted.len(),
        ms(sorted.first().copied().unwrap_or_default()),
        ms(quantile(sorted, 0.5)),
        ms(quantile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_route_is_pending_while_404_and_done_at_its_backend() {
        let e = Expect::added("n.example.com", "/", "b");
        assert_eq!(judge(&e, 404, None), Verdict::Pending);
        assert_eq!(judge(&e, 200, Some("b")), Verdict::Done);
        assert_eq!(judge(&e, 503, None), Verdict::Wrong("503 from no backend".into()), "a transient 503 is a bug");
        assert_eq!(judge(&e, 200, Some("a")), Verdict::Wrong("200 from a".into()), "another route's backend");
    }

    #[test]
    fn a_removed_route_serves_until_it_answers_404() {
        let e = Expect::removed("o.example.com", "/", "b");
        assert_eq!(judge(&e, 200, Some("b")), Verdict::Pending);
        assert_eq!(judge(&e, 404, Some("b")), Verdict::Done);
        assert!(matches!(judge(&e, 502, None), Verdict::Wrong(_)));
    }

    #[test]
    fn an_updated_route_never_answers_404_in_between() {
        let e = Expect::updated("u.example.com", "/", "a", "b");
        assert_eq!(judge(&e, 200, Some("a")), Verdict::Pending);
        assert_eq!(judge(&e, 200, Some("b")), Verdict::Done);
        assert_eq!(judge(&e, 404, None), Verdict::Wrong("404 from no backend".into()));
    }

    #[test]
    fn merged_outcomes_add_up_and_keep_a_bounded_sample() {
        let mut all = Outcome::default();
        for _ in 0..3 {
            let part = Outcome {
                latencies: vec![("add", Duration::from_millis(3)), ("remove", Duration::from_millis(1))],
                wrong: (0..15).map(|i| i.to_string()).collect(),
                wrong_count: 15,
                probes: 10,
                ..Outcome::default()
            };
            all.merge(part);
        }
        assert_eq!(all.sorted("add"), vec![Duration::from_millis(3); 3]);
        assert_eq!((all.wrong_count, all.wrong.len(), all.probes), (45, KEPT, 30));
    }
}
