//! `picket controller` against the in-process Kubernetes API-server double (real list and
//! watch semantics, built from the k8s-openapi types): endpoints reach a subscribed sidecar
//! client (the proxy's own controller client, over mTLS with mesh identities) and changes
//! arrive as deltas; watch disconnects and 410 Gone re-lists keep the state right; a newly
//! labelled namespace gets its trust bundle and file-mode policy.

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use picket_proxy::discover::Resolution;
use picket_tests::controller::{
    TEST_POLICY, TestController, endpoint_slice, endpoints, identity, namespace, pod, service,
    sidecar_credentials, subscriber, wait_for,
};
use picket_tests::kube_api::KubeApiDouble;
use picket_tests::{TestCa, assert_eventually};

const SERVICE: &str = "10.96.0.10:80";

/// A namespace `shop` with Service `orders` (two meshed pods, one unmeshed) and a client pod.
async fn shop(api: &KubeApiDouble) -> Result<()> {
    api.apply(&namespace("shop", true)?)?;
    api.apply(&pod("shop", "orders-1", "orders", "10.1.0.1", true)?)?;
    api.apply(&pod("shop", "orders-2", "orders", "10.1.0.2", true)?)?;
    api.apply(&pod("shop", "legacy-1", "legacy", "10.1.0.3", false)?)?;
    api.apply(&pod("shop", "frontend-1", "frontend", "10.1.0.50", true)?)?;
    api.apply(&service("shop", "orders", "10.96.0.10", 80)?)?;
    api.apply(&endpoint_slice(
        "shop",
        "orders",
        8080,
        &[
            ("orders-1", "10.1.0.1", true),
            ("orders-2", "10.1.0.2", true),
            ("legacy-1", "10.1.0.3", true),
        ],
    )?)?;
    Ok(())
}

fn three() -> Vec<(String, Option<String>)> {
    vec![
        ("10.1.0.1:8080".to_owned(), identity("shop", "orders")),
        ("10.1.0.2:8080".to_owned(), identity("shop", "orders")),
        ("10.1.0.3:8080".to_owned(), None),
    ]
}

#[tokio::test]
async fn endpoints_reach_a_subscriber_and_changes_arrive_as_deltas() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    shop(&api).await?;
    let controller = TestController::start(&ca, &api).await?;
    let creds = sidecar_credentials(&ca, "shop", "frontend").await?;
    let client = subscriber(controller.listen, &creds)?;

    let want = three();
    let first = wait_for(&client, SERVICE, "the three endpoints", |r| {
        endpoints(r) == want
    })
    .await?;
    let Resolution::Known(d) = &first else {
        anyhow::bail!("not known: {first:?}");
    };
    ensure!(d.service.as_deref() == Some("shop/orders"), "{d:?}");

    // A pod address resolves to the pod alone; an address nobody has is unknown.
    let pod_answer = wait_for(&client, "10.1.0.1:9999", "the pod", |r| {
        matches!(r, Resolution::Known(_))
    })
    .await?;
    ensure!(
        endpoints(&pod_answer) == [("10.1.0.1:9999".to_owned(), identity("shop", "orders"))],
        "{pod_answer:?}"
    );
    wait_for(&client, "192.0.2.7:80", "unknown", |r| {
        *r == Resolution::Unknown
    })
    .await?;

    // An endpoint goes unready: removed.
    api.apply(&endpoint_slice(
        "shop",
        "orders",
        8080,
        &[
            ("orders-1", "10.1.0.1", true),
            ("orders-2", "10.1.0.2", false),
            ("legacy-1", "10.1.0.3", true),
        ],
    )?)?;
    let want = vec![three()[0].clone(), three()[2].clone()];
    wait_for(&client, SERVICE, "orders-2 removed", |r| {
        endpoints(r) == want
    })
    .await?;

    // A pod is replaced by one of another service account at a new address.
    api.delete::<Pod>("shop", "orders-1")?;
    api.apply(&pod("shop", "orders-9", "orders-v2", "10.1.0.9", true)?)?;
    api.apply(&endpoint_slice(
        "shop",
        "orders",
        8080,
        &[
            ("orders-9", "10.1.0.9", true),
            ("legacy-1", "10.1.0.3", true),
        ],
    )?)?;
    let want = vec![
        ("10.1.0.3:8080".to_owned(), None),
        ("10.1.0.9:8080".to_owned(), identity("shop", "orders-v2")),
    ];
    wait_for(&client, SERVICE, "orders-9 in place of orders-1", |r| {
        endpoints(r) == want
    })
    .await?;
    // The old pod's address is no longer a pod's.
    wait_for(&client, "10.1.0.1:9999", "unknown", |r| {
        *r == Resolution::Unknown
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_client_without_a_mesh_certificate_is_refused() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    let controller = TestController::start(&ca, &api).await?;
    // TLS without a client certificate: the handshake fails (TLS 1.3 reports it on first read).
    let roots = picket_tests::ca::certs_from_pem(&ca.bundle_pem()?)?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(picket_common::crypto::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(controller.listen).await?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    // The controller's certificate names its SPIFFE ID, not an address: a webpki client
    // refuses it, and even with the check skipped the server refuses the missing certificate.
    let outcome = async {
        let mut tls = connector.connect(name, tcp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut tls, b"GET / HTTP/1.1\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await?;
        Ok::<usize, std::io::Error>(n)
    }
    .await;
    ensure!(
        !matches!(outcome, Ok(n) if n > 0),
        "a client without a certificate got an answer"
    );
    Ok(())
}

#[tokio::test]
async fn watch_disconnects_bookmarks_and_gone_relists_keep_the_state_right() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    shop(&api).await?;
    let controller = TestController::start(&ca, &api).await?;
    let creds = sidecar_credentials(&ca, "shop", "frontend").await?;
    let client = subscriber(controller.listen, &creds)?;
    wait_for(&client, SERVICE, "the three endpoints", |r| {
        endpoints(r) == three()
    })
    .await?;
    let lists = api.lists("endpointslices");
    assert_eventually!(
        Duration::from_secs(10),
        api.open_watches("endpointslices") == 1
    );

    // The watch drops; a change made while it is down arrives when it resumes from the last
    // version it saw, without a new list.
    api.disconnect_watches();
    api.apply(&endpoint_slice(
        "shop",
        "orders",
        8080,
        &[
            ("orders-1", "10.1.0.1", true),
            ("legacy-1", "10.1.0.3", true),
        ],
    )?)?;
    let want = vec![three()[0].clone(), three()[2].clone()];
    wait_for(
        &client,
        SERVICE,
        "the change made while disconnected",
        |r| endpoints(r) == want,
    )
    .await?;
    ensure!(
        api.lists("endpointslices") == lists,
        "a plain disconnect made a re-list"
    );

    // A bookmark moves the watch's version forward: after compaction and a disconnect it
    // resumes from the bookmark, still without a list.
    assert_eventually!(
        Duration::from_secs(10),
        api.open_watches("endpointslices") == 1
    );
    api.apply(&pod("shop", "unrelated", "x", "10.1.0.77", false)?)?;
    // The bookmark is queued before the disconnect, so the watch reads it before its end.
    api.bookmark();
    api.compact();
    api.disconnect_watches();
    assert_eventually!(
        Duration::from_secs(10),
        api.open_watches("endpointslices") == 1
    );
    ensure!(
        api.lists("endpointslices") == lists,
        "a bookmarked watch made a re-list"
    );

    // Now the history is gone past the watch's version: 410 Gone, a re-list, and the change
    // made meanwhile is there.
    api.disconnect_watches();
    api.apply(&endpoint_slice(
        "shop",
        "orders",
        8080,
        &[("orders-2", "10.1.0.2", true)],
    )?)?;
    api.compact();
    let want = vec![three()[1].clone()];
    wait_for(&client, SERVICE, "the state after the re-list", |r| {
        endpoints(r) == want
    })
    .await?;
    assert_eventually!(
        Duration::from_secs(10),
        api.lists("endpointslices") > lists,
        "no re-list after 410 Gone: {:?}",
        api.requests()
    );
    Ok(())
}

#[tokio::test]
async fn a_newly_labelled_namespace_gets_its_trust_bundle_and_policy() -> Result<()> {
    let ca = TestCa::start().await?;
    let api = KubeApiDouble::start().await?;
    api.apply(&namespace("fresh", false)?)?;
    // A ConfigMap someone else manages is left alone.
    let foreign: ConfigMap = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"namespace": "gitops", "name": "picket-trust-bundle"},
        "data": {"bundle.pem": "managed elsewhere"},
    }))?;
    api.apply(&namespace("gitops", true)?)?;
    api.apply(&foreign)?;
    let _controller = TestController::start(&ca, &api).await?;
    ensure!(
        api.get::<ConfigMap>("fresh", "picket-trust-bundle")?
            .is_none(),
        "an unlabelled namespace got a bundle"
    );

    api.apply(&namespace("fresh", true)?)?;
    let bundle = ca.bundle_pem()?;
    assert_eventually!(
        Duration::from_secs(10),
        api.get::<ConfigMap>("fresh", "picket-trust-bundle")?
            .and_then(|c| c.data)
            .and_then(|d| d.get("bundle.pem").cloned())
            == Some(bundle.clone()),
        "no bundle in the newly labelled namespace"
    );
    // File-mode policy goes with it.
    assert_eventually!(
        Duration::from_secs(10),
        api.get::<ConfigMap>("fresh", "picket-policy")?
            .and_then(|c| c.data)
            .and_then(|d| d.get("policy.yaml").cloned())
            .as_deref()
            == Some(TEST_POLICY),
        "no policy in the newly labelled namespace"
    );
    let kept = api.get::<ConfigMap>("gitops", "picket-trust-bundle")?;
    ensure!(
        kept.and_then(|c| c.data)
            .and_then(|d| d.get("bundle.pem").cloned())
            == Some("managed elsewhere".to_owned()),
        "a foreign ConfigMap was overwritten"
    );
    Ok(())
}
