//! Smoke tests that the control plane is a real one: server-side validation, watches,
//! RBAC, CRDs and kubectl all behave as on a production cluster.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use quic_ingress_e2e::namespace::unique_name;
use quic_ingress_e2e::objects::{SERVICE_NAME_LABEL, endpoint_slice, ingress, ingress_class, service, tls_secret};
use quic_ingress_e2e::{TestEnv, TestNamespace, eventually, identity};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The API status of a failed call, looking through anyhow context.
fn api_status(err: &anyhow::Error) -> Option<&kube::core::Status> {
    err.chain().find_map(|e| match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status.as_ref()),
        _ => None,
    })
}

fn expect_status(result: Result<impl std::fmt::Debug>, code: u16, reason: &str) -> Result<kube::core::Status> {
    let err = match result {
        Ok(v) => bail!("expected {code} {reason}, but the call succeeded: {v:?}"),
        Err(e) => e,
    };
    let status = api_status(&err).ok_or_else(|| anyhow!("expected an API error, got: {err:#}"))?;
    assert_eq!((status.code, status.reason.as_str()), (code, reason), "{status:?}");
    Ok(status.clone())
}

#[tokio::test]
async fn server_side_validation_rejects_invalid_objects() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "validation").await?;

    let status = expect_status(ns.create(&service("bad-port").port("http", 70000).build()).await, 422, "Invalid")?;
    assert!(status.message.contains("spec.ports[0].port"), "{}", status.message);

    // Loopback addresses are refused in EndpointSlices; this is why backends tests talk
    // to run in the test host's network namespace (quic_ingress_e2e::netns).
    let loopback = endpoint_slice("web").address("127.0.0.1").port("http", 8001).build();
    let status = expect_status(ns.create(&loopback).await, 422, "Invalid")?;
    assert!(status.message.contains("loopback"), "{}", status.message);

    let bad_path = ingress("bad-path").rule("", "no-leading-slash", "Prefix", "web", 80).build();
    expect_status(ns.create(&bad_path).await, 422, "Invalid")?;

    // Nothing invalid was stored.
    assert!(ns.api::<Service>().get_opt("bad-port").await?.is_none());
    assert!(ns.api::<EndpointSlice>().list(&ListParams::default()).await?.items.is_empty());
    ns.cleanup().await
}

#[tokio::test]
async fn builders_make_objects_the_server_accepts() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "builders").await?;
    // A documentation address (RFC 5737): stored only, never contacted.
    let ip = "198.51.100.7";

    ns.create(&service("web").port("http", 8080).build()).await?;
    let slice = endpoint_slice("web").address(ip).port("http", 8001).address(ip).ready(false).build();
    ns.create(&slice).await?;
    ns.create(&tls_secret("web-tls", "-----BEGIN CERTIFICATE-----\n", "-----BEGIN PRIVATE KEY-----\n").build()).await?;
    let class = unique_name("quic-e2e");
    let classes = Api::<IngressClass>::all(ns.client().clone());
    classes.create(&PostParams::default(), &ingress_class(&class, "quic-ingress.dev/controller").build()).await?;
    let ing = ingress("web")
        .class(&class)
        .rule("web.example", "/", "Prefix", "web", "http")
        .rule("web.example", "/exact", "Exact", "web", 8080)
        .tls(&["web.example"], "web-tls")
        .build();
    let created = ns.create(&ing).await;
    classes.delete(&class, &DeleteParams::default()).await?;
    created?;

    // Found the way a controller finds them: slices by the service-name label.
    let slices =
        ns.api::<EndpointSlice>().list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"))).await?;
    assert_eq!(slices.items.len(), 1);
    assert_eq!(slices.items[0].endpoints.len(), 2);
    let stored = ns.api::<Ingress>().get("web").await?;
    let rules = stored.spec.and_then(|s| s.rules).unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].http.as_ref().map(|h| h.paths.len()), Some(2));
    let secret = ns.api::<Secret>().get("web-tls").await?;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    ns.cleanup().await
}

#[tokio::test]
async fn watch_sees_create_update_delete_in_order() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "watch").await?;
    let api = ns.api::<ConfigMap>();

    let start = api.list(&ListParams::default()).await?.metadata.resource_version.unwrap_or_default();
    let mut events = api.watch(&WatchParams::default().timeout(60), &start).await?.boxed();

    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some("watched".into()), ..ObjectMeta::default() },
        data: Some([("step".to_string(), "created".to_string())].into()),
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &cm).await?;
    let patch = json!({"data": {"step": "updated"}});
    api.patch("watched", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    api.delete("watched", &DeleteParams::default()).await?;

    let step = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("step").cloned()).unwrap_or_default();
    let mut seen = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(event) = events.try_next().await? {
            match event {
                WatchEvent::Added(cm) => seen.push(("ADDED", step(&cm))),
                WatchEvent::Modified(cm) => seen.push(("MODIFIED", step(&cm))),
                WatchEvent::Deleted(cm) => {
                    seen.push(("DELETED", step(&cm)));
                    break;
                }
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => bail!("watch error: {e:?}"),
            }
        }
        Ok(())
    })
    .await
    .with_context(|| format!("watch events so far: {seen:?}"))??;
    assert_eq!(
        seen,
        [("ADDED", "created".to_string()), ("MODIFIED", "updated".to_string()), ("DELETED", "updated".to_string())]
    );
    ns.cleanup().await
}

#[tokio::test]
async fn rbac_forbids_the_unprivileged_identity() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "rbac").await?;
    ns.create(&tls_secret("private", "cert", "key").build()).await?;

    let nobody = env.client_as(identity::NOBODY).await?;
    let list = Api::<Secret>::namespaced(nobody.clone(), ns.name()).list(&ListParams::default()).await;
    let status = expect_status(list.map_err(Into::into), 403, "Forbidden")?;
    assert!(status.message.contains("\"nobody\""), "{}", status.message);
    let all = Api::<Secret>::all(nobody).list(&ListParams::default()).await;
    expect_status(all.map_err(Into::into), 403, "Forbidden")?;
    assert_eq!(ns.api::<Secret>().list(&ListParams::default()).await?.items.len(), 1);

    // Bindings decide: a Role bound to the controller identity lets it list Secrets here,
    // and only here, while nobody stays forbidden.
    let controller = Api::<Secret>::namespaced(env.client_as(identity::CONTROLLER).await?, ns.name());
    expect_status(controller.list(&ListParams::default()).await.map_err(Into::into), 403, "Forbidden")?;
    ns.create(&Role {
        metadata: ObjectMeta { name: Some("secret-reader".into()), ..ObjectMeta::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..PolicyRule::default()
        }]),
    })
    .await?;
    ns.create(&RoleBinding {
        metadata: ObjectMeta { name: Some("controller-reads-secrets".into()), ..ObjectMeta::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "secret-reader".into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: identity::CONTROLLER.into(),
            namespace: None,
        }]),
    })
    .await?;
    // The authorizer learns of bindings through its own watch, so this is not immediate.
    let items = eventually("the binding to take effect", TIMEOUT, || async {
        Ok(Some(controller.list(&ListParams::default()).await?.items.len()))
    })
    .await?;
    assert_eq!(items, 1);
    let elsewhere = Api::<Secret>::namespaced(env.client_as(identity::CONTROLLER).await?, "default");
    expect_status(elsewhere.list(&ListParams::default()).await.map_err(Into::into), 403, "Forbidden")?;
    let nobody = Api::<Secret>::namespaced(env.client_as(identity::NOBODY).await?, ns.name());
    expect_status(nobody.list(&ListParams::default()).await.map_err(Into::into), 403, "Forbidden")?;
    ns.cleanup().await
}

#[tokio::test]
async fn a_crd_can_be_installed_and_used() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "crd").await?;
    let client = ns.client().clone();
    // A group of its own, so runs on a shared cluster never meet.
    let group = format!("{}.e2e.quic-ingress.dev", unique_name("g"));
    let name = format!("widgets.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["size"],
                    "properties": {"size": {"type": "integer", "minimum": 1}}
                }}}}
            }]
        }
    }))?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd).await?;

    let used = async {
        tokio::time::timeout(TIMEOUT, await_condition(crds.clone(), &name, conditions::is_crd_established()))
            .await
            .context("CRD not established")??;
        let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1", "Widget"), "widgets");
        let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), ns.name(), &resource);
        let small = DynamicObject::new("small", &resource).data(json!({"spec": {"size": 3}}));
        // Established precedes the REST handler being served by a moment.
        eventually("the Widget resource to be served", TIMEOUT, || async {
            match widgets.create(&PostParams::default(), &small).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Some(())),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        let stored = widgets.get("small").await?;
        assert_eq!(stored.data["spec"]["size"], 3);

        // The CRD's schema is enforced by the server.
        let too_small = DynamicObject::new("too-small", &resource).data(json!({"spec": {"size": 0}}));
        expect_status(widgets.create(&PostParams::default(), &too_small).await.map_err(Into::into), 422, "Invalid")?;
        Ok::<_, anyhow::Error>(())
    }
    .await;

    // Remove the CRD even when the test failed: it is cluster-wide.
    crds.delete(&name, &DeleteParams::default()).await?;
    used?;
    eventually("the CRD to be gone", TIMEOUT, || async { Ok(crds.get_opt(&name).await?.is_none().then_some(())) })
        .await?;
    ns.cleanup().await
}

async fn run(cmd: std::process::Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    tokio::process::Command::from(cmd).output().await.with_context(|| format!("running {shown}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn kubectl_works_with_the_kubeconfigs() -> Result<()> {
    let env = TestEnv::shared().await?;
    let ns = TestNamespace::new(env, "kubectl").await?;

    let mut get = env.kubectl();
    get.args(["get", "namespace", ns.name(), "-o", "name"]);
    let out = run(get).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), format!("namespace/{}", ns.name()));

    let mut create = env.kubectl();
    create.args(["-n", ns.name(), "create", "configmap", "from-kubectl", "--from-literal=made-by=kubectl"]);
    let out = run(create).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cm = ns.api::<ConfigMap>().get("from-kubectl").await?;
    assert_eq!(cm.data.unwrap_or_default().get("made-by").map(String::as_str), Some("kubectl"));

    let mut whoami = env.kubectl_as(identity::NOBODY)?;
    whoami.args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    let out = run(whoami).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), identity::NOBODY);

    let mut can_i = env.kubectl_as(identity::NOBODY)?;
    can_i.args(["auth", "can-i", "list", "secrets", "-n", ns.name()]);
    let out = run(can_i).await?;
    assert_eq!(stdout(&out), "no");
    assert_eq!(out.status.code(), Some(1));

    // The server is version-stamped: clients see the release, not v0.0.0.
    let mut version = env.kubectl();
    version.args(["version", "-o", "json"]);
    let out = run(version).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let version: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let server = version["serverVersion"]["gitVersion"].as_str().unwrap_or_default().to_string();
    assert_eq!(server, env.client()?.apiserver_version().await?.git_version);
    if env.is_testenv() {
        assert!(server.starts_with("v1.34."), "server version {server}");
    }
    ns.cleanup().await
}
