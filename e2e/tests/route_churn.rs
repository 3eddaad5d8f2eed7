//! Route propagation under load (issue 14 point 4), as a test that can fail: one
//! controller with 300 routes that stay (150 Ingresses, 150 HTTPRoutes on a Gateway of our
//! class) and 100 more, two demo backends in the test host, and a steady HTTP/3 load from
//! the crate's own client on the routes that stay. While it runs, three bursts each add 100
//! routes, remove the 100 of the burst before and change 20 that stay (an Ingress path
//! added, an HTTPRoute's backend weights swapped), Ingresses and HTTPRoutes mixed, 16
//! writes at a time, so the table is rebuilt many times under the load.
//!
//! Asserted: no request of the load answered other than 2xx and none without an answer;
//! every added route served (and every changed one changed) within 10 s of its write, and
//! their fastest, p50 and p99 under bounds that a quiet period or a stall would break, and
//! tables rebuilt back to back while changes come (no delay before a build); every
//! removed route at 404 within 10 s; no probe of a route ever saw anything but the answer
//! before its write or the one after it; the load ran through every burst.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, PostParams};
use quic_ingress::client::{H3Client, TrustOptions};
use quic_ingress::kube::gateway::api::{GatewayClass, HTTPRoute};
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::gateway::{gateway, gateway_class, http_route, https_listener};
use quic_ingress_e2e::load::{Load, LoadOptions, load_average, quantile};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{ca_and_cert, endpoint_slice, ingress, service, tls_secret};
use quic_ingress_e2e::propagation::{self, Expect, Outcome, Write, summary};
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace};
use serde_json::json;

/// Routes that stay for the whole test, and get the load.
const STAYING_INGRESSES: usize = 150;
const STAYING_ROUTES: usize = 150;
const BURSTS: usize = 3;
/// Routes each burst adds (half Ingresses, half HTTPRoutes), and removes of the burst before.
const CHURN: usize = 100;
/// Staying routes each burst changes (half of each kind).
const UPDATES: usize = 20;
/// API writes in flight.
const WRITERS: usize = 16;
/// Probe requests in flight.
const PROBES: usize = 32;
/// The load: requesters (one HTTP/3 connection each) and requests per second over all.
const LOAD_CONNECTIONS: usize = 4;
const LOAD_RATE: u64 = 200;
/// Bounds of the load whatever happens: the test ends well before either.
const LOAD_MAX_REQUESTS: u64 = 40_000;
const LOAD_MAX_TIME: Duration = Duration::from_secs(150);
/// Each write's effect must be seen within this.
const ROUTE_DEADLINE: Duration = Duration::from_secs(10);
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// Propagation bounds under the load (added and changed routes together). The table is
/// rebuilt as soon as a change comes (no quiet period), so a write waits for the build in
/// progress and one more (about 90 ms each for 400 routes in a debug build), plus the API
/// write and the watch event. Measured on the reference machine (e2e/README.md): p50
/// 0.3-0.4 s and p99 0.6-0.7 s at load average 4-6, p50 0.6-0.8 s and p99 1.2-1.7 s at
/// 8-11 (other builds running). p50 and p99 catch builds that queue up or stall, with room
/// for a busy machine; the 10 s deadline catches a change never served. The fastest of the
/// 360 changes barely moves with the machine's load: its bound catches a quiet period
/// (the last write of a burst would wait it out).
const MIN_BOUND: Duration = Duration::from_millis(600);
const P50_BOUND: Duration = Duration::from_millis(1500);
const P99_BOUND: Duration = Duration::from_millis(4000);
/// While writes keep coming, one build follows another: 7-15 builds per second of churn
/// were measured (load average 4-11). A delay before each build (a debounce, a rate limit)
/// caps that: a 700 ms one gave 1.1 per second, with p50 and p99 still inside their
/// bounds on a loaded machine, so this floor is what catches it.
const MIN_REBUILDS_PER_SECOND: f64 = 2.0;

fn figure(line: &str) {
    use std::io::Write as _;
    println!("figure: {line}");
    let dir = quic_ingress_e2e::process::repo_root().join("target");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("e2e-figures.txt")) {
        let _ = writeln!(f, "route_churn: {line}");
    }
}

/// Names and objects of the test; `a` and `b` are the Services (and demo backends).
struct Routes<'a> {
    ns: &'a TestNamespace,
}

impl<'a> Routes<'a> {
    fn ingress_host(name: &str) -> String {
        format!("{name}.example.com")
    }

    fn route_host(name: &str) -> String {
        format!("{name}.gw.example.com")
    }

    /// Ingress `name` for its host: `/` (Prefix) to `service`, and `extra` (Exact) to `b`.
    fn ingress(name: &str, service: &str, extra: Option<&str>) -> Ingress {
        let host = Self::ingress_host(name);
        let mut i = ingress(name).class("quic").rule(&host, "/", "Prefix", service, 80);
        if let Some(path) = extra {
            i = i.rule(&host, path, "Exact", "b", 80);
        }
        i.build()
    }

    /// HTTPRoute `name` on Gateway `gw` for its host: `/` to `a` and `b` with these weights.
    fn route(name: &str, weight_a: i32, weight_b: i32) -> Result<HTTPRoute> {
        http_route(
            name,
            json!({
                "parentRefs": [{"name": "gw"}],
                "hostnames": [Self::route_host(name)],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                           "backendRefs": [{"name": "a", "port": 80, "weight": weight_a},
                                           {"name": "b", "port": 80, "weight": weight_b}]}],
            }),
        )
    }

    fn apply_ingress(&self, i: Ingress) -> LocalBoxFuture<'a, Result<()>> {
        let ns = self.ns;
        async move { ns.apply(&i).await.map(drop) }.boxed_local()
    }

    fn apply_route(&self, r: Result<HTTPRoute>) -> LocalBoxFuture<'a, Result<()>> {
        let ns = self.ns;
        async move { ns.apply(&r?).await.map(drop) }.boxed_local()
    }

    /// The writes adding churn set `k`: Ingresses `ci{k}-N` and HTTPRoutes `cr{k}-N`, all to `b`.
    fn add_churn(&self, k: usize) -> Vec<Write<'a>> {
        let mut out = Vec::new();
        for n in 0..CHURN / 2 {
            let name = format!("ci{k}-{n}");
            out.push(Write {
                expect: Expect::added(&Self::ingress_host(&name), "/", "b"),
                write: self.apply_ingress(Self::ingress(&name, "b", None)),
            });
            let name = format!("cr{k}-{n}");
            out.push(Write {
                expect: Expect::added(&Self::route_host(&name), "/", "b"),
                write: self.apply_route(Self::route(&name, 0, 1)),
            });
        }
        out
    }

    /// The writes removing churn set `k`.
    fn remove_churn(&self, k: usize) -> Vec<Write<'a>> {
        let mut out = Vec::new();
        for n in 0..CHURN / 2 {
            let ns = self.ns;
            let name = format!("ci{k}-{n}");
            out.push(Write {
                expect: Expect::removed(&Self::ingress_host(&name), "/", "b"),
                write: async move { ns.delete::<Ingress>(&name).await }.boxed_local(),
            });
            let name = format!("cr{k}-{n}");
            out.push(Write {
                expect: Expect::removed(&Self::route_host(&name), "/", "b"),
                write: async move { ns.delete::<HTTPRoute>(&name).await }.boxed_local(),
            });
        }
        out
    }

    /// The writes changing staying routes in burst `k` (1-based; each burst its own):
    /// Ingress `iN` gains Exact path `/kK` to `b` (under its Prefix `/` to `a` until then);
    /// HTTPRoute `rN` moves its weight from `a` to `b`.
    fn update_staying(&self, k: usize) -> Vec<Write<'a>> {
        let mut out = Vec::new();
        for n in (k - 1) * UPDATES / 2..k * UPDATES / 2 {
            let name = format!("i{n}");
            let path = format!("/k{k}");
            out.push(Write {
                expect: Expect::updated(&Self::ingress_host(&name), &path, "a", "b"),
                write: self.apply_ingress(Self::ingress(&name, "a", Some(&path))),
            });
            let name = format!("r{n}");
            out.push(Write {
                expect: Expect::updated(&Self::route_host(&name), "/", "a", "b"),
                write: self.apply_route(Self::route(&name, 0, 1)),
            });
        }
        out
    }
}

/// The lists taken in turn, so adds, removals and changes are mixed.
fn interleave<T>(lists: Vec<Vec<T>>) -> Vec<T> {
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for it in &mut iters {
            out.extend(it.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

fn check_outcome(what: &str, o: &Outcome) -> Result<()> {
    ensure!(o.late.is_empty(), "{what}: {} writes not seen in time: {:?}", o.late.len(), o.late);
    ensure!(o.wrong_count == 0, "{what}: {} probes answered neither before nor after: {:?}", o.wrong_count, o.wrong);
    ensure!(o.error_count == 0, "{what}: {} probes got no answer: {:?}", o.error_count, o.errors);
    Ok(())
}

#[tokio::test]
async fn routes_propagate_under_load_while_the_table_churns() -> Result<()> {
    let test_started = Instant::now();
    let env = TestEnv::shared().await?;
    let host = TestHost::shared().await?;
    install_crd(env).await?;
    let (a, b) = (Backend::start_in(host, "a").await?, Backend::start_in(host, "b").await?);
    let ns = TestNamespace::new(env, "churn").await?;
    let _rbac = ControllerRbac::grant(env, &ns).await?;
    let c = Controller::start(env, ns.name()).await?;
    let class = unique_name("churn-gw");
    let classes = Api::<GatewayClass>::all(env.client()?);
    classes.create(&PostParams::default(), &gateway_class(&class)?).await?;
    for (name, backend) in [("a", &a), ("b", &b)] {
        ns.apply(&service(name).port("http", 80).build()).await?;
        ns.apply(
            &endpoint_slice(name)
                .name(&format!("{name}-1"))
                .address(host.ip())
                .port("http", i32::from(backend.port()))
                .build(),
        )
        .await?;
    }
    let (_, cert, key) = ca_and_cert("*.gw.example.com")?;
    ns.apply(&tls_secret("gw-tls", &cert, &key).build()).await?;
    ns.apply(&gateway("gw", &class, json!([https_listener("https", c.addr().port(), None, "gw-tls")]))?).await?;

    // The routes that stay, and churn set 0 (removed by the first burst), each awaited.
    let trust = TrustOptions { insecure: true, ca_file: None };
    let probe = H3Client::connect(c.addr(), "probe.example.com", &trust).await?;
    let routes = Routes { ns: &ns };
    let mut setup = Vec::new();
    for n in 0..STAYING_INGRESSES {
        let name = format!("i{n}");
        setup.push(Write {
            expect: Expect::added(&Routes::ingress_host(&name), "/", "a"),
            write: routes.apply_ingress(Routes::ingress(&name, "a", None)),
        });
    }
    for n in 0..STAYING_ROUTES {
        let name = format!("r{n}");
        setup.push(Write {
            expect: Expect::added(&Routes::route_host(&name), "/", "a"),
            write: routes.apply_route(Routes::route(&name, 1, 0)),
        });
    }
    setup.extend(routes.add_churn(0));
    let setup_started = Instant::now();
    let created = setup.len();
    let initial = propagation::run(&probe, WRITERS, PROBES, SETUP_DEADLINE, setup).await?;
    check_outcome("setup", &initial)?;
    let setup_took = setup_started.elapsed();

    // The load, on the routes that stay.
    let hosts: Vec<String> = (0..STAYING_INGRESSES)
        .map(|n| Routes::ingress_host(&format!("i{n}")))
        .chain((0..STAYING_ROUTES).map(|n| Routes::route_host(&format!("r{n}"))))
        .collect();
    let mut opts = LoadOptions::new(LOAD_CONNECTIONS, LOAD_RATE);
    opts.max_requests = LOAD_MAX_REQUESTS;
    opts.max_duration = LOAD_MAX_TIME;
    let rebuilds_before = c.metric("quic_ingress_route_table_rebuilds_total").await?;
    let load = Load::start(c.addr(), Arc::new(hosts), opts).await?;

    let churn_started = Instant::now();
    let mut churn = Outcome::default();
    for k in 1..=BURSTS {
        let writes = interleave(vec![routes.add_churn(k), routes.remove_churn(k - 1), routes.update_staying(k)]);
        let burst_started = Instant::now();
        let o = propagation::run(&probe, WRITERS, PROBES, ROUTE_DEADLINE, writes).await?;
        println!(
            "burst {k}: {:.1} s; add {}; remove {}; update {}; {} probes; load so far {} answers",
            burst_started.elapsed().as_secs_f64(),
            summary(&o.sorted("add")),
            summary(&o.sorted("remove")),
            summary(&o.sorted("update")),
            o.probes,
            load.done()
        );
        churn.merge(o);
    }
    let churn_took = churn_started.elapsed();
    let report = load.stop().await;
    let rebuilds = c.metric("quic_ingress_route_table_rebuilds_total").await? - rebuilds_before;

    let mut served: Vec<Duration> = churn.sorted("add");
    served.extend(churn.sorted("update"));
    served.sort();
    let (p50, p99) = (quantile(&served, 0.5), quantile(&served, 0.99));
    let counts = &report.counts;
    let lines = [
        format!(
            "setup: {created} routes written 16 at a time and served in {:.1} s ({})",
            setup_took.as_secs_f64(),
            summary(&initial.sorted("add"))
        ),
        format!(
            "churn: {BURSTS} bursts of {CHURN} added + {CHURN} removed + {UPDATES} changed in {:.1} s, {rebuilds} table rebuilds ({:.1}/s)",
            churn_took.as_secs_f64(),
            rebuilds / churn_took.as_secs_f64()
        ),
        format!("added: {}", summary(&churn.sorted("add"))),
        format!("changed: {}", summary(&churn.sorted("update"))),
        format!("added and changed: {}", summary(&served)),
        format!("removed (to 404): {}", summary(&churn.sorted("remove"))),
        format!(
            "load: {} requests over {LOAD_CONNECTIONS} HTTP/3 connections in {:.1} s ({:.0}/s): {} 2xx, {} not 2xx {:?}, {} without answer {:?}",
            counts.total(),
            report.elapsed.as_secs_f64(),
            report.rate,
            counts.ok,
            counts.not_2xx(),
            counts.statuses,
            counts.transport_errors(),
            counts.errors
        ),
        format!(
            "probes: {} during the churn; test wall time {:.1} s; load average {}",
            churn.probes,
            test_started.elapsed().as_secs_f64(),
            load_average()
        ),
    ];
    for line in &lines {
        figure(line);
    }

    check_outcome("churn", &churn)?;
    ensure!(
        counts.failed() == 0,
        "the load on the staying routes saw {} non-2xx and {} unanswered requests; first: {:?}",
        counts.not_2xx(),
        counts.transport_errors(),
        counts.first_failures
    );
    ensure!(!report.ended_early, "the load ended by its own bounds before the churn did");
    // A quarter of the planned rate: a load starved that far did not test much.
    let floor = (LOAD_RATE as f64 * churn_took.as_secs_f64() / 4.0).max(200.0) as u64;
    ensure!(counts.total() >= floor, "the load completed only {} requests (at least {floor} expected)", counts.total());
    let want = BURSTS * (CHURN + UPDATES);
    ensure!(served.len() == want, "{} of {want} added or changed routes timed", served.len());
    ensure!(churn.sorted("remove").len() == BURSTS * CHURN, "every removed route timed");
    let fastest = served.first().copied().unwrap_or_default();
    ensure!(fastest <= MIN_BOUND, "the fastest propagation took {fastest:?} (over {MIN_BOUND:?}): a fixed delay?");
    ensure!(p50 <= P50_BOUND, "propagation p50 {p50:?} over {P50_BOUND:?}");
    ensure!(p99 <= P99_BOUND, "propagation p99 {p99:?} over {P99_BOUND:?}");
    let per_second = rebuilds / churn_took.as_secs_f64();
    ensure!(
        per_second >= MIN_REBUILDS_PER_SECOND,
        "{rebuilds} table rebuilds in {:.1} s of churn ({per_second:.1}/s, at least {MIN_REBUILDS_PER_SECOND}/s expected): builds are delayed",
        churn_took.as_secs_f64()
    );

    drop(c);
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    ns.cleanup().await
}
