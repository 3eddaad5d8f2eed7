//! The controller when the API server goes away and comes back. The shared control plane
//! of a test binary cannot be stopped by one test, so this binary starts a private one
//! (`TestEnv::start_private`), stops it and restarts it on the same data and port.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use quic_ingress_e2e::controller::{admin_get, install_crd};
use quic_ingress_e2e::objects::{endpoint_slice, ingress, service};
use quic_ingress_e2e::{Backend, Controller, ControllerRbac, TestEnv, TestHost, TestNamespace, eventually};

const TIMEOUT: Duration = Duration::from_secs(20);
/// After the API server returns, the controller's watches reconnect with backoff (kube's
/// default: up to 30 s between attempts, with jitter), then re-list.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

fn slice_to(ip: std::net::IpAddr, port: u16) -> EndpointSlice {
    endpoint_slice("web").name("web-1").address(ip).port("http", i32::from(port)).build()
}

#[tokio::test]
async fn traffic_survives_the_api_server_and_watches_resume() -> Result<()> {
    let host = TestHost::shared().await?;
    let a = Backend::start_in(host, "a").await?;
    let b = Backend::start_in(host, "b").await?;
    // Dropped last: locals drop in reverse order.
    let mut env = TestEnv::start_private().await?;
    let ns = TestNamespace::new(&env, "restart").await?;
    install_crd(&env).await?;
    let rbac = ControllerRbac::grant(&env, &ns).await?;
    let mut c = Controller::start(&env, ns.name()).await?;

    ns.create(&service("web").port("http", 80).build()).await?;
    ns.apply(&slice_to(host.ip(), a.port())).await?;
    ns.create(&ingress("shop").class("quic").rule("shop.example.com", "/", "Prefix", "web", 80).build()).await?;
    c.wait_for_backend("shop.example.com", "/", "a", TIMEOUT).await?;

    // The API server and etcd go away; the data plane keeps serving its last table.
    let stopping = Instant::now();
    env.stop().await?;
    println!("API server and etcd stopped in {:.1?}", stopping.elapsed());
    let mut seen = BTreeMap::new();
    for _ in 0..50 {
        let reply = c.get("shop.example.com", "/").await?;
        *seen.entry((reply.status, reply.backend().map(str::to_string))).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, BTreeMap::from([((200, Some("a".to_string())), 50)]), "while the API server was down");
    c.check_running()?;
    // Still ready: a lost API server is no reason to be taken out of a load balancer.
    let (status, _) = admin_get(c.admin_addr(), "/readyz").await?;
    assert_eq!(status, 200, "/readyz while the API server was down");

    // Back on the same port, data and credentials: the watches resume and see changes.
    env.restart().await?;
    let restarted = Instant::now();
    // The admin client's pooled connection died with the server; the first call may fail.
    eventually("the EndpointSlice update", TIMEOUT, || async {
        ns.apply(&slice_to(host.ip(), b.port())).await.map(Some)
    })
    .await?;
    c.wait_for_backend("shop.example.com", "/", "b", RECONNECT_TIMEOUT).await?;
    println!("watches resumed: traffic moved {:.1?} after the API server was back", restarted.elapsed());
    c.check_running()?;

    drop(c);
    drop(rbac);
    ns.cleanup().await?;
    env.stop().await
}
