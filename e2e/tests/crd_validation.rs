//! The BackendGroup schema as a real kube-apiserver enforces it (issue 10): objects that
//! break a bound of the shared group model are refused when they are created, with the
//! API server's error naming the field; what only the controller can check (a status range
//! running backwards) reaches the object's status and Events, also naming the field.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use quic_ingress::kube::crd::BackendGroup;
use quic_ingress_e2e::controller::install_crd;
use quic_ingress_e2e::objects::backend_group;
use quic_ingress_e2e::{Controller, ControllerRbac, TestEnv, TestNamespace, eventually};
use serde_json::{Value, json};

/// For the controller to see an object and its leader to write status; generous for a
/// loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A documentation address (RFC 5737): stored only, never contacted.
const BACKEND: &str = "http://198.51.100.7:8080";

/// A valid spec with one static backend, with `extra` merged in at the top level.
fn spec(extra: Value) -> Value {
    let mut spec = json!({"backends": [{"url": BACKEND}]});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    spec
}

/// Creates the BackendGroup, expects the API server to refuse it as Invalid, and returns
/// its message.
async fn refused(ns: &TestNamespace, name: &str, spec: Value) -> Result<String> {
    let err = match ns.create(&backend_group(name, spec)?).await {
        Ok(_) => bail!("BackendGroup {name} was accepted"),
        Err(e) => e,
    };
    let status = err
        .chain()
        .find_map(|e| match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(status.clone()),
            _ => None,
        })
        .ok_or_else(|| anyhow!("expected an API error, got: {err:#}"))?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"), "{status:?}");
    // Shown with --nocapture: what a user of kubectl apply reads.
    eprintln!("{name}: {}", status.message);
    Ok(status.message)
}

#[tokio::test]
async fn the_api_server_refuses_out_of_bounds_groups_naming_the_field() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "crd-bounds").await?;
    install_crd(env).await?;

    // At the bounds is fine: the schema refuses only what the controller would.
    let at_bounds = spec(json!({
        "healthCheck": {"interval": "100ms", "healthyThreshold": 100},
        "timeouts": {"connect": "1ms", "responseHeaders": "1m30s"},
        "passiveHealthCheck": {"enabled": false, "cooldown": "0.5s"},
    }));
    ns.create(&backend_group("at-bounds", at_bounds)?).await?;

    let message = refused(&ns, "hot-loop", spec(json!({"healthCheck": {"interval": "0s"}}))).await?;
    assert!(message.contains("spec.healthCheck.interval") && message.contains("must be at least 100ms"), "{message}");
    let message = refused(&ns, "fast-loop", spec(json!({"healthCheck": {"interval": "99ms"}}))).await?;
    assert!(message.contains("spec.healthCheck.interval"), "{message}");

    let many: Vec<Value> = (0..1001).map(|i| json!({"url": format!("http://198.51.100.7:{}", 1000 + i)})).collect();
    let message = refused(&ns, "crowd", json!({"backends": many})).await?;
    assert!(message.contains("spec.backends") && message.contains("1000"), "{message}");

    let heavy = json!({"backends": [{"url": BACKEND, "weight": 1_000_001}]});
    let message = refused(&ns, "heavy", heavy).await?;
    assert!(message.contains("spec.backends[0].weight"), "{message}");

    let message = refused(&ns, "no-threshold", spec(json!({"healthCheck": {"unhealthyThreshold": 0}}))).await?;
    assert!(message.contains("spec.healthCheck.unhealthyThreshold"), "{message}");

    let message = refused(&ns, "no-wait", spec(json!({"timeouts": {"poolWait": "0ms"}}))).await?;
    assert!(message.contains("spec.timeouts.poolWait") && message.contains("must be greater than 0"), "{message}");

    let routes: Vec<Value> = (0..101).map(|i| json!({"path": format!("/r{i}")})).collect();
    let message = refused(&ns, "sprawl", spec(json!({"routes": routes}))).await?;
    assert!(message.contains("spec.routes"), "{message}");

    // Nothing refused was stored.
    let stored: Vec<String> = ns
        .api::<BackendGroup>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|bg| bg.metadata.name)
        .collect();
    assert_eq!(stored, ["at-bounds"]);
    ns.cleanup().await
}

#[tokio::test]
async fn what_only_the_controller_checks_reaches_status_and_events_naming_the_field() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "crd-ours").await?;
    install_crd(env).await?;
    let rbac = ControllerRbac::grant(env, &ns).await?;
    let controller = Controller::start(env, ns.name()).await?;

    // The pattern takes any two statuses; that the range runs backwards is the controller's
    // to find.
    let backwards = spec(json!({"healthCheck": {"expectedStatus": "599-200"}}));
    ns.create(&backend_group("backwards", backwards)?).await?;
    let groups = ns.api::<BackendGroup>();
    let ready = eventually("Ready=False on BackendGroup backwards", TIMEOUT, || async {
        let bg = groups.get("backwards").await?;
        let ready = bg.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "False" => Ok(Some(c)),
            other => Err(anyhow!("Ready so far: {other:?}")),
        }
    })
    .await?;
    assert_eq!(ready.reason, "InvalidBackendGroup", "{ready:?}");
    assert!(ready.message.starts_with("spec.healthCheck.expectedStatus: "), "{}", ready.message);

    let events = ns.api::<Event>();
    let note = eventually("an InvalidBackendGroup Event on backwards", TIMEOUT, || async {
        let found = events.list(&ListParams::default()).await?.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidBackendGroup")
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("BackendGroup") && r.name.as_deref() == Some("backwards")
                })
        });
        Ok(found.map(|e| e.note.unwrap_or_default()))
    })
    .await?;
    assert!(note.contains("spec.healthCheck.expectedStatus"), "{note}");

    drop(controller);
    drop(rbac);
    ns.cleanup().await
}

#[tokio::test]
async fn route_matches_and_filters_are_stored_whole_and_their_bounds_enforced() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "crd-filters").await?;
    install_crd(env).await?;

    let route = json!({
        "host": "shop.example.com",
        "path": "/api",
        "match": {"method": "GET", "headers": [{"type": "Exact", "name": "x-canary", "value": "yes"}],
                  "queryParams": [{"type": "RegularExpression", "name": "v", "value": "[0-9]+"}]},
        "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
            {"type": "CORS", "cors": {"allowOrigins": ["https://*.example.com"], "maxAge": 600, "allowCredentials": true}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow"}, "percent": 10}}
        ],
        "timeouts": {"request": "10s", "backendRequest": "2s"}
    });
    ns.create(&backend_group("filtered", spec(json!({"routes": [route.clone()]})))?).await?;
    // Nothing was pruned: every field is in the schema.
    let stored = serde_json::to_value(ns.api::<BackendGroup>().get("filtered").await?.spec.routes)?;
    assert_eq!(stored[0]["filters"], route["filters"]);
    assert_eq!(stored[0]["match"], route["match"]);
    assert_eq!(stored[0]["timeouts"], route["timeouts"]);

    let many: Vec<Value> =
        (0..17).map(|_| json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m"}}})).collect();
    let message = refused(&ns, "many-filters", spec(json!({"routes": [{"path": "/", "filters": many}]}))).await?;
    assert!(message.contains("spec.routes[0].filters"), "{message}");
    // (An unknown filter type cannot be sent: the typed client refuses it before the API
    // server does.)
    let percent = json!({"routes": [{"path": "/", "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m"}, "percent": 101}}]}]});
    let message = refused(&ns, "bad-percent", spec(percent)).await?;
    assert!(message.contains("spec.routes[0].filters[0].requestMirror.percent"), "{message}");
    let status = json!({"routes": [{"path": "/", "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 200}}]}]});
    let message = refused(&ns, "bad-status", spec(status)).await?;
    assert!(message.contains("spec.routes[0].filters[0].requestRedirect.statusCode"), "{message}");
    let headers: Vec<Value> = (0..17).map(|i| json!({"name": format!("x-{i}"), "value": "1"})).collect();
    let message =
        refused(&ns, "many-headers", spec(json!({"routes": [{"path": "/", "match": {"headers": headers}}]}))).await?;
    assert!(message.contains("spec.routes[0].match.headers"), "{message}");
    let timeout = json!({"routes": [{"path": "/", "timeouts": {"request": "1.5s"}}]});
    let message = refused(&ns, "bad-timeout", spec(timeout)).await?;
    assert!(message.contains("spec.routes[0].timeouts.request"), "{message}");
    ns.cleanup().await
}
