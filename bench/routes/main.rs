//! Route propagation and memory at scale (issue 15, points 1 and 2), against the real API
//! server the cluster tests use: how long a new Ingress or HTTPRoute takes from its API
//! write to its first 200 while thousands exist and HTTP/3 load runs, whether anything
//! fails while routes churn, and what one replica's memory costs per Ingress and per
//! endpoint. Prints figures, never asserts on them. Run by `make bench-routes`
//! (bench/routes.mk); every phase is bounded in count and time.
//!
//! Settings (environment): `BENCH_SIZES` (routes at which trials run, default
//! `3000,10000`), `BENCH_MEMORY` (Ingress counts where RSS is read, default
//! `1000,5000,10000`), `BENCH_TRIALS` (50), `BENCH_RATE` (background requests/s, 2000),
//! `BENCH_CHURN` (routes added and removed under load, 1000), `BENCH_PHASES`
//! (`ingress,endpoints,httproute`), `BENCH_ENDPOINTS` (`1000x100`), `BENCH_SHARED_SERVICES`
//! (0: every Ingress has a Service and an EndpointSlice of its own; N: the Ingresses share
//! N Services, Ingress `i{n}` pointing at Service `s{n % N}`), `BENCH_OUT` (a file the
//! report is also written to).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::client::{H3Client, TrustOptions};
use quic_ingress::kube::gateway::api::{GatewayClass, HTTPRoute};
use quic_ingress_e2e::controller::{ControllerOptions, install_crd};
use quic_ingress_e2e::gateway::{gateway, gateway_class, http_route, https_listener, install_gateway_crds};
use quic_ingress_e2e::load::{Load, LoadOptions, bulk, get, load_average, ms, quantile};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, ingress, service, tls_secret};
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace};
use serde_json::json;

/// API writes in flight while objects are created in bulk.
const WRITERS: usize = 32;
/// Longest wait for one trial's route (a trial that takes longer is reported as lost).
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a bulk of objects to be in the table.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL_EVERY: Duration = Duration::from_millis(2);
/// Connections the background load is spread over.
const LOAD_CONNECTIONS: usize = 8;

struct Settings {
    sizes: Vec<usize>,
    memory: Vec<usize>,
    trials: usize,
    rate: u64,
    churn: usize,
    phases: Vec<String>,
    endpoints: (usize, usize),
    /// Services the Ingresses share; 0 for one per Ingress.
    shared_services: usize,
}

fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.to_string());
    raw.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().with_context(|| format!("{name}={raw}")))
        .collect()
}

fn env_num(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Self> {
        let endpoints = std::env::var("BENCH_ENDPOINTS").unwrap_or_else(|_| "1000x100".into());
        let (services, per) = endpoints.split_once('x').ok_or_else(|| anyhow!("BENCH_ENDPOINTS={endpoints}"))?;
        let s = Settings {
            sizes: env_list("BENCH_SIZES", "3000,10000")?,
            memory: env_list("BENCH_MEMORY", "1000,5000,10000")?,
            trials: env_num("BENCH_TRIALS", 50)? as usize,
            rate: env_num("BENCH_RATE", 2000)?,
            churn: env_num("BENCH_CHURN", 1000)? as usize,
            phases: std::env::var("BENCH_PHASES")
                .unwrap_or_else(|_| "ingress,endpoints,httproute".into())
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            endpoints: (services.parse()?, per.parse()?),
            shared_services: env_num("BENCH_SHARED_SERVICES", 0)? as usize,
        };
        ensure!(s.trials > 0 && s.trials <= 1000, "BENCH_TRIALS must be 1..=1000");
        ensure!(s.sizes.iter().chain(&s.memory).all(|n| *n <= 50_000), "at most 50,000 routes");
        ensure!(s.rate <= 50_000, "BENCH_RATE at most 50000");
        ensure!(s.shared_services <= 50_000, "BENCH_SHARED_SERVICES at most 50000");
        Ok(s)
    }
}

// === Report ===

#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn say(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }
}

// === Trials ===

/// One trial's times from the start of the API write: to the write's answer, and to the
/// first 200.
struct Trial {
    written: Duration,
    served: Duration,
}

/// Writes one new route with `write`, then polls `host` over `probe` every 2 ms until it
/// answers 200.
async fn trial<F>(probe: &H3Client, host: &str, write: F) -> Result<Trial>
where
    F: Future<Output = Result<()>>,
{
    let started = Instant::now();
    write.await?;
    let written = started.elapsed();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match get(probe, host, "/").await?.0 {
            200 => return Ok(Trial { written, served: started.elapsed() }),
            404 => {}
            s => bail!("{host} answered {s} while waiting for it"),
        }
        if started.elapsed() > TRIAL_TIMEOUT {
            bail!("{host} not served after {TRIAL_TIMEOUT:?}");
        }
    }
}

/// The controller's own account of the tables it published: how many, and the sums of
/// `change_to_serving_seconds` (first watch event of a burst to serving) and
/// `route_table_build_seconds`.
#[derive(Clone, Copy, Default)]
struct ControllerTimes {
    tables: f64,
    change_to_serving: f64,
    builds: f64,
    build: f64,
}

impl ControllerTimes {
    async fn read(c: &Controller) -> Result<Self> {
        Ok(ControllerTimes {
            tables: c.metric("quic_ingress_change_to_serving_seconds_count").await?,
            change_to_serving: c.metric("quic_ingress_change_to_serving_seconds_sum").await?,
            builds: c.metric("quic_ingress_route_table_build_seconds_count").await?,
            build: c.metric("quic_ingress_route_table_build_seconds_sum").await?,
        })
    }

    /// Where a trial's time went: the API write (client side), the controller (watch event
    /// to serving, and the build within it), and the rest (the watch's delivery, the poll).
    async fn report_since(self, c: &Controller, trials: &[Trial], report: &mut Report) -> Result<()> {
        let now = Self::read(c).await?;
        let tables = (now.tables - self.tables).max(1.0);
        let builds = (now.builds - self.builds).max(1.0);
        let mut written: Vec<Duration> = trials.iter().map(|t| t.written).collect();
        written.sort();
        report.say(format!(
            "  where it went: API write p50 {:.1} ms; in the controller {} tables, watch event to serving mean {:.1} ms, build mean {:.1} ms",
            ms(quantile(&written, 0.5)),
            now.tables - self.tables,
            (now.change_to_serving - self.change_to_serving) * 1000.0 / tables,
            (now.build - self.build) * 1000.0 / builds,
        ));
        Ok(())
    }
}

fn summarize(report: &mut Report, what: &str, trials: &[Trial], goal: &str) {
    let mut samples: Vec<Duration> = trials.iter().map(|t| t.served).collect();
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len().max(1) as u32;
    report.say(format!(
        "{what}: {} trials, p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms, mean {:.1} ms (goal {goal})",
        samples.len(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.99)),
        ms(samples.first().copied().unwrap_or_default()),
        ms(samples.last().copied().unwrap_or_default()),
        ms(mean),
    ));
}

// === Helpers ===

/// Waits until the controller's table holds at least `want` routes.
async fn settle(c: &Controller, want: usize) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let routes = c.metric("quic_ingress_route_table_routes").await? as usize;
        if routes >= want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            bail!("{routes} of {want} routes in the table after {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RSS after the process has been quiet for a moment (allocator caches settle).
async fn rss_mib(c: &Controller) -> Result<f64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(c.rss_kib()? as f64 / 1024.0)
}

/// The part of the RSS mapped from files (the binary's touched code and read-only data):
/// clean, shared and reclaimable, unlike the rest, which the process alone holds.
fn file_mib(c: &Controller) -> Result<f64> {
    Ok(c.file_rss_kib()? as f64 / 1024.0)
}

/// Waits until the served table's groups hold `want` endpoints in all (`/debug/routes`);
/// how long that took.
async fn wait_for_endpoints(c: &Controller, want: usize) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let routes = c.debug_routes().await?;
        let have: usize = routes["backend_groups"]
            .as_array()
            .map(|groups| groups.iter().map(|g| g["endpoints"].as_array().map_or(0, Vec::len)).sum())
            .unwrap_or(0);
        if have >= want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > SETTLE_TIMEOUT {
            bail!("{have} of {want} endpoints in the table after {SETTLE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// RSS once two readings a second apart differ by less than 1 MiB (at most 30 s).
async fn steady_rss_mib(c: &Controller) -> Result<f64> {
    let mut last = c.rss_kib()? as f64 / 1024.0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = c.rss_kib()? as f64 / 1024.0;
        if (now - last).abs() < 1.0 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// A Service with port `http` 80 and no cluster IP: the test control plane's service range
/// holds 254 addresses, and translation reads the ports and EndpointSlices only.
fn headless(name: &str) -> k8s_openapi::api::core::v1::Service {
    let mut svc = service(name).port("http", 80).build();
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
    }
    svc
}

fn api_err(e: kube::Error) -> anyhow::Error {
    anyhow!(e)
}

/// `perf record` of the controller while routes churn, when `BENCH_PERF_DIR` is set: the
/// functions with the most samples go into the report.
struct Profile {
    child: tokio::process::Child,
    data: std::path::PathBuf,
}

impl Profile {
    fn start(c: &Controller, name: &str) -> Result<Option<Profile>> {
        let Some(dir) = std::env::var_os("BENCH_PERF_DIR") else { return Ok(None) };
        std::fs::create_dir_all(&dir)?;
        let data = std::path::Path::new(&dir).join(format!("{name}.data"));
        let child = tokio::process::Command::new("perf")
            .args(["record", "-q", "-F", "499", "-p", &c.pid().to_string(), "-o"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf record (BENCH_PERF_DIR is set)")?;
        Ok(Some(Profile { child, data }))
    }

    /// Stops recording; the top of `perf report` as text, of the whole process and of the
    /// thread that builds tables (`route-table`).
    async fn finish(mut self) -> Result<String> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill only sends a signal to the perf process this program started.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        let all = self.top(&[]).await?;
        let builds = self.top(&["--comms", "route-table"]).await?;
        Ok(format!(
            "  perf profile ({}), functions over 1.5% of samples:\n{all}\n  of the route-table thread alone:\n{builds}",
            self.data.display()
        ))
    }

    async fn top(&self, filter: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new("perf")
            .args(["report", "--stdio", "--no-children", "--sort", "symbol", "--percent-limit", "1.5"])
            .args(filter)
            .arg("-i")
            .arg(&self.data)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        // perf pads each line to the terminal's width and ends it with the empty columns.
        let top: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim_end().trim_end_matches(['-', ' ']))
            .take(25)
            .collect();
        Ok(top.join("\n"))
    }
}

// === Ingresses ===

struct IngressBench<'a> {
    ns: &'a TestNamespace,
    backend_ip: String,
    backend_port: i32,
    /// Ingresses `i0..i{count}` exist, each pointing at Service [`Self::service`] (which
    /// has an EndpointSlice).
    count: usize,
    /// Services the Ingresses share (0: one each).
    shared: usize,
}

impl IngressBench<'_> {
    fn host(n: usize) -> String {
        format!("i{n}.example.com")
    }

    /// The Service Ingress `n` points at.
    fn service(&self, n: usize) -> String {
        match self.shared {
            0 => format!("s{n}"),
            shared => format!("s{}", n % shared),
        }
    }

    async fn grow(&mut self, to: usize) -> Result<Duration> {
        let started = Instant::now();
        let (ns, ip, port) = (self.ns, self.backend_ip.clone(), self.backend_port);
        // With shared Services, the first growth creates them all.
        let services = match self.shared {
            0 => self.count..to,
            shared if self.count == 0 => 0..shared,
            _ => 0..0,
        };
        bulk(WRITERS, services, |n| {
            let ip = ip.clone();
            async move {
                let svc = format!("s{n}");
                ns.create(&headless(&svc)).await?;
                ns.create(&endpoint_slice(&svc).name(&format!("{svc}-1")).address(&ip).port("http", port).build())
                    .await?;
                Ok(())
            }
        })
        .await?;
        let this = &*self;
        bulk(WRITERS, self.count..to, |n| async move {
            ns.create(
                &ingress(&format!("i{n}"))
                    .class("quic")
                    .rule(&Self::host(n), "/", "Prefix", &this.service(n), 80)
                    .build(),
            )
            .await?;
            Ok(())
        })
        .await?;
        self.count = to;
        Ok(started.elapsed())
    }
}

async fn ingress_phase(env: &TestEnv, host: &'static TestHost, s: &Settings, report: &mut Report) -> Result<()> {
    let web = Backend::start_in(host, "bench").await?;
    let ns = TestNamespace::new(env, "bench-ing").await?;
    let _rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start_with(env, ControllerOptions::new(ns.name())).await?;
    // A second replica of another class watching the same namespace: it caches every
    // object but serves none, so the difference is what the table (and what only served
    // objects cost) holds.
    let mut shadow_opts = ControllerOptions::new(ns.name());
    shadow_opts.extra_args = vec!["--ingress-class".into(), "bench-other".into()];
    let shadow = Controller::start_with(env, shadow_opts).await?;
    let (rss0, shadow0) = (rss_mib(&c).await?, rss_mib(&shadow).await?);
    report.say(format!(
        "Ingress: RSS with 0 Ingresses {rss0:.1} MiB, of which {:.1} MiB mapped from the binary \
         (replica of another class watching the same objects: {shadow0:.1} MiB)",
        file_mib(&c)?
    ));
    let mut b = IngressBench {
        ns: &ns,
        backend_ip: host.ip().to_string(),
        backend_port: i32::from(web.port()),
        count: 0,
        shared: s.shared_services,
    };
    let shared = match s.shared_services {
        0 => "a Service and an EndpointSlice each".to_string(),
        n => format!("{n} Services with an EndpointSlice each shared by all"),
    };
    let (trial_svc, churn_svc) = (b.service(0), b.service(1));
    let trust = TrustOptions { insecure: true, ca_file: None };
    let ns = &ns;

    let mut steps: Vec<usize> = s.memory.iter().chain(&s.sizes).copied().collect();
    steps.sort_unstable();
    steps.dedup();
    let mut memory_rows = Vec::new();
    for step in steps {
        let created = b.grow(step).await?;
        let settled = settle(&c, step).await?;
        report.say(format!(
            "Ingress: {step} Ingresses (with {shared}) created in {:.1} s; in the table {:.1} s after the last write (load {})",
            created.as_secs_f64(),
            settled.as_secs_f64(),
            load_average()
        ));
        if s.memory.contains(&step) {
            let (rss, shadow_rss) = (rss_mib(&c).await?, rss_mib(&shadow).await?);
            let per = (rss - rss0) * 1024.0 / step as f64;
            report.say(format!(
                "Ingress: RSS at {step}: {rss:.1} MiB ({per:.2} KiB per Ingress over the empty replica, {:.1} MiB mapped from the binary); \
                 caches alone (replica of another class) {shadow_rss:.1} MiB, {:.2} KiB per Ingress; table and served state {:.1} MiB",
                file_mib(&c)?,
                (shadow_rss - shadow0) * 1024.0 / step as f64,
                (rss - rss0) - (shadow_rss - shadow0),
            ));
            memory_rows.push((step, rss, shadow_rss));
        }
        if !s.sizes.contains(&step) {
            continue;
        }
        let hosts: Arc<Vec<String>> = Arc::new((0..step).map(IngressBench::host).collect());
        let load = Load::start(c.addr(), hosts, LoadOptions::new(LOAD_CONNECTIONS, s.rate)).await?;
        // A new connection: an idle one times out while objects are created.
        let probe = H3Client::connect(c.addr(), "probe.example.com", &trust).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = load.take();
        let times = ControllerTimes::read(&c).await?;
        let profile = Profile::start(&c, &format!("ingress-trials-{step}"))?;
        let mut samples = Vec::with_capacity(s.trials);
        let mut lost = Vec::new();
        for t in 0..s.trials {
            let name = format!("t{step}-{t}");
            let h = format!("{name}.example.com");
            let ing = ingress(&name).class("quic").rule(&h, "/", "Prefix", &trial_svc, 80).build();
            match trial(&probe, &h, async { ns.create(&ing).await.map(drop) }).await {
                Ok(d) => samples.push(d),
                Err(e) => lost.push(format!("{e:#}")),
            }
        }
        let during_trials = load.take();
        summarize(report, &format!("Ingress propagation at {step}"), &samples, goal_for(step));
        times.report_since(&c, &samples, report).await?;
        if let Some(p) = profile {
            report.say(p.finish().await?);
        }
        if during_trials.failed() > 0 {
            report.say(format!("  not 2xx during the trials: {:?} {:?}", during_trials.statuses, during_trials.errors));
        }
        if !lost.is_empty() {
            report.say(format!("  {} trials lost: {:?}", lost.len(), lost));
        }
        // Churn: `churn` Ingresses added in bursts of 100, then removed in bursts of 100.
        let profile = Profile::start(&c, &format!("ingress-{step}"))?;
        let churn_started = Instant::now();
        let churn_svc = &churn_svc;
        for burst in (0..s.churn).collect::<Vec<_>>().chunks(100) {
            bulk(WRITERS, burst.iter().copied(), |k| async move {
                let name = format!("c{step}-{k}");
                let h = format!("{name}.example.com");
                ns.create(&ingress(&name).class("quic").rule(&h, "/", "Prefix", churn_svc, 80).build()).await.map(drop)
            })
            .await?;
        }
        for burst in (0..s.churn).collect::<Vec<_>>().chunks(100) {
            bulk(
                WRITERS,
                burst.iter().copied(),
                |k| async move { ns.delete::<Ingress>(&format!("c{step}-{k}")).await },
            )
            .await?;
        }
        let churn_took = churn_started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(p) = profile {
            report.say(p.finish().await?);
        }
        let during_churn = load.take();
        let rate = load.stop().await.rate;
        report.say(format!(
            "Ingress background load at {step}: {rate:.0} req/s over {LOAD_CONNECTIONS} HTTP/3 connections; \
             during the trials {} of {} not 2xx; while {} Ingresses were added and removed in bursts of 100 ({:.1} s): {} of {} not 2xx {:?} {:?} (goal 0)",
            during_trials.failed(),
            during_trials.total(),
            s.churn,
            churn_took.as_secs_f64(),
            during_churn.failed(),
            during_churn.total(),
            during_churn.statuses,
            during_churn.errors,
        ));
        report.say(format!("  load average now {}", load_average()));
        // The trial Ingresses go, so the next step starts from `step` routes again.
        bulk(WRITERS, 0..s.trials, |t| async move { ns.delete::<Ingress>(&format!("t{step}-{t}")).await }).await?;
    }
    if let [(n1, r1, s1), .., (n2, r2, s2)] = memory_rows.as_slice() {
        let d = (*n2 - *n1) as f64;
        report.say(format!(
            "Ingress: marginal cost {n1}->{n2}: {:.2} KiB per Ingress (with {shared}), of which caches {:.2} KiB, table and served state {:.2} KiB",
            (r2 - r1) * 1024.0 / d,
            (s2 - s1) * 1024.0 / d,
            ((r2 - r1) - (s2 - s1)) * 1024.0 / d
        ));
    }
    drop(shadow);
    drop(c);
    Ok(())
}

fn goal_for(step: usize) -> &'static str {
    if step <= 3000 { "p50 <= 20 ms, p99 <= 50 ms" } else { "p99 <= 100 ms" }
}

// === Endpoints ===

async fn endpoints_phase(env: &TestEnv, s: &Settings, report: &mut Report) -> Result<()> {
    let (services, per) = s.endpoints;
    let ns = TestNamespace::new(env, "bench-ep").await?;
    let _rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start_with(env, ControllerOptions::new(ns.name())).await?;
    let rss0 = rss_mib(&c).await?;
    let ns = &ns;
    // Addresses in 10.200.0.0/16 are never sent traffic (no request reaches these hosts).
    let build = |n: usize, endpoints: usize| {
        let svc = format!("e{n}");
        let mut slice = endpoint_slice(&svc).name(&format!("{svc}-1"));
        for k in 0..endpoints {
            let id = n * per + k;
            slice = slice.address(format!("10.{}.{}.{}", 200 + id / 65_536, (id / 256) % 256, id % 256));
        }
        (svc, slice.port("http", 8080).build())
    };
    let mut rows = Vec::new();
    for (round, endpoints) in [(0usize, 1usize), (1, per)] {
        let started = Instant::now();
        bulk(WRITERS, 0..services, |n| async move {
            let (svc, slice) = build(n, endpoints);
            if round == 0 {
                ns.create(&headless(&svc)).await?;
                ns.create(
                    &ingress(&format!("e{n}"))
                        .class("quic")
                        .rule(&format!("e{n}.example.com"), "/", "Prefix", &svc, 80)
                        .build(),
                )
                .await?;
            }
            ns.apply(&slice).await.map(drop)
        })
        .await?;
        let written = started.elapsed();
        settle(&c, services).await?;
        // Every endpoint in the served table (a build that was still running once made the
        // figure a third of the truth), then RSS once it holds.
        let in_table = wait_for_endpoints(&c, services * endpoints).await?;
        let rss = steady_rss_mib(&c).await?;
        report.say(format!(
            "Endpoints: {services} Services x {endpoints} endpoints ({} endpoints), written in {:.1} s, all in the table {:.1} s later: RSS {rss:.1} MiB (empty replica {rss0:.1} MiB; load {})",
            services * endpoints,
            written.as_secs_f64(),
            in_table.as_secs_f64(),
            load_average()
        ));
        rows.push((services * endpoints, rss));
    }
    if let [(e1, r1), (e2, r2)] = rows.as_slice() {
        report.say(format!(
            "Endpoints: {:.0} bytes per endpoint ({} -> {} endpoints)",
            (r2 - r1) * 1024.0 * 1024.0 / (*e2 - *e1) as f64,
            e1,
            e2
        ));
    }
    drop(c);
    Ok(())
}

// === HTTPRoutes ===

async fn httproute_phase(env: &TestEnv, host: &'static TestHost, s: &Settings, report: &mut Report) -> Result<()> {
    install_gateway_crds(env).await?;
    let web = Backend::start_in(host, "bench-gw").await?;
    let ns = TestNamespace::new(env, "bench-gw").await?;
    let _rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start_with(env, ControllerOptions::new(ns.name())).await?;
    let class = unique_name("bench-gw");
    let classes = Api::<GatewayClass>::all(env.client()?);
    classes.create(&PostParams::default(), &gateway_class(&class)?).await.map_err(api_err)?;
    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&endpoint_slice("web").name("web-1").address(host.ip()).port("http", i32::from(web.port())).build())
        .await?;
    let (_, cert, key) = ca_and_cert("*.gw.example.com")?;
    ns.apply(&tls_secret("gw-tls", &cert, &key).build()).await?;
    ns.create(&gateway("gw", &class, json!([https_listener("https", c.addr().port(), None, "gw-tls")]))?).await?;
    let route = |name: &str, host: &str| {
        http_route(
            name,
            json!({
                "parentRefs": [{"name": "gw"}],
                "hostnames": [host],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                           "backendRefs": [{"name": "web", "port": 80}]}],
            }),
        )
    };
    let host_of = |n: usize| format!("r{n}.gw.example.com");
    let trust = TrustOptions { insecure: true, ca_file: None };
    let ns = &ns;
    let mut count = 0;
    let mut sizes = s.sizes.clone();
    sizes.sort_unstable();
    for step in sizes {
        let started = Instant::now();
        bulk(WRITERS, count..step, |n| {
            let r = route(&format!("r{n}"), &host_of(n));
            async move { ns.create(&r?).await.map(drop) }
        })
        .await?;
        count = step;
        let settled = settle(&c, step).await?;
        report.say(format!(
            "HTTPRoute: {step} HTTPRoutes on one Gateway created in {:.1} s; in the table {:.1} s after the last write; RSS {:.1} MiB (load {})",
            started.elapsed().as_secs_f64(),
            settled.as_secs_f64(),
            rss_mib(&c).await?,
            load_average()
        ));
        let hosts: Arc<Vec<String>> = Arc::new((0..step).map(host_of).collect());
        let load = Load::start(c.addr(), hosts, LoadOptions::new(LOAD_CONNECTIONS, s.rate)).await?;
        let probe = H3Client::connect(c.addr(), "probe.gw.example.com", &trust).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = load.take();
        let times = ControllerTimes::read(&c).await?;
        let profile = Profile::start(&c, &format!("httproute-trials-{step}"))?;
        let mut samples = Vec::with_capacity(s.trials);
        let mut lost = Vec::new();
        for t in 0..s.trials {
            let name = format!("t{step}-{t}");
            let h = format!("{name}.gw.example.com");
            let r = route(&name, &h)?;
            match trial(&probe, &h, async { ns.create(&r).await.map(drop) }).await {
                Ok(d) => samples.push(d),
                Err(e) => lost.push(format!("{e:#}")),
            }
        }
        summarize(report, &format!("HTTPRoute propagation at {step}"), &samples, goal_for(step));
        times.report_since(&c, &samples, report).await?;
        if let Some(p) = profile {
            report.say(p.finish().await?);
        }
        if !lost.is_empty() {
            report.say(format!("  {} trials lost: {:?}", lost.len(), lost));
        }
        let churn_started = Instant::now();
        for burst in (0..s.churn).collect::<Vec<_>>().chunks(100) {
            bulk(WRITERS, burst.iter().copied(), |k| {
                let r = route(&format!("c{step}-{k}"), &format!("c{step}-{k}.gw.example.com"));
                async move { ns.create(&r?).await.map(drop) }
            })
            .await?;
        }
        for burst in (0..s.churn).collect::<Vec<_>>().chunks(100) {
            bulk(
                WRITERS,
                burst.iter().copied(),
                |k| async move { ns.delete::<HTTPRoute>(&format!("c{step}-{k}")).await },
            )
            .await?;
        }
        let churn_took = churn_started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stopped = load.stop().await;
        let (counts, rate) = (stopped.counts, stopped.rate);
        report.say(format!(
            "HTTPRoute background load at {step}: {:.0} req/s; while {} HTTPRoutes were added and removed in bursts of 100 ({:.1} s): {} of {} not 2xx {:?} {:?} (goal 0)",
            rate,
            s.churn,
            churn_took.as_secs_f64(),
            counts.failed(),
            counts.total(),
            counts.statuses,
            counts.errors
        ));
        bulk(WRITERS, 0..s.trials, |t| async move { ns.delete::<HTTPRoute>(&format!("t{step}-{t}")).await }).await?;
    }
    drop(c);
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = Settings::from_env()?;
    let mut report = Report::default();
    let env = TestEnv::shared().await?;
    install_crd(env).await?;
    let host = TestHost::shared().await?;
    let bin = std::env::var("QUIC_INGRESS_BIN").unwrap_or_default();
    report.say(format!(
        "bench-routes {} UTC, binary {bin}, {} CPUs, load average {}",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M:%S"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load_average()
    ));
    let started = Instant::now();
    for phase in s.phases.clone() {
        match phase.as_str() {
            "ingress" => ingress_phase(env, host, &s, &mut report).await?,
            "endpoints" => endpoints_phase(env, &s, &mut report).await?,
            "httproute" => httproute_phase(env, host, &s, &mut report).await?,
            other => bail!("unknown phase {other:?} (ingress, endpoints, httproute)"),
        }
    }
    report.say(format!("bench-routes done in {:.0} s", started.elapsed().as_secs_f64()));
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(&out, report.lines.join("\n") + "\n").with_context(|| format!("writing {out}"))?;
    }
    Ok(())
}
