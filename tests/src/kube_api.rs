//! The Kubernetes API-server test double: an in-process HTTPS server built on the
//! k8s-openapi types that speaks the API server's list and watch semantics for the resources
//! Picket's controller uses (Pods, Services, EndpointSlices, Namespaces, ConfigMaps, and the
//! custom resources `picket.dev/v1` and `security.istio.io/v1` AuthorizationPolicy).
//!
//! What it implements, as the API server does:
//! - one `resourceVersion` counter for every change; lists carry it in `metadata`, objects in
//!   `metadata.resourceVersion`;
//! - `GET` list (all namespaces or one), with `resourceVersion` (`""` and `"0"`: the current
//!   state; an older version than the retained history: `410 Gone`);
//! - `GET ?watch=1` from a `resourceVersion`: every retained event after it (ADDED, MODIFIED,
//!   DELETED), then live events, one JSON object per line; `allowWatchBookmarks=true` gets
//!   BOOKMARK events when [`KubeApiDouble::bookmark`] is called; `timeoutSeconds` ends the
//!   stream; a version older than the retained history gets one ERROR event with a `410`
//!   Status ("too old resource version") and the stream ends, after which a client lists again;
//! - `GET` one object, `POST` create (`409` AlreadyExists), `PUT` replace with optimistic
//!   concurrency (`409` Conflict on a stale `resourceVersion`), `404` NotFound as a Status;
//! - the bearer token is checked (`401` otherwise).
//!
//! - custom resources are served only while their CRD is installed
//!   ([`KubeApiDouble::install_crd`]; `picket.dev` is installed from the start, as the chart
//!   does, Istio's is not), and API discovery of their group version
//!   (`GET /apis/<group>/<version>`, an `APIResourceList`; `404` when not installed).
//!
//! Not implemented, refused with `400` so a client that relies on them fails loudly: label and
//! field selectors. `limit` is accepted and ignored (the whole list comes in one page with no
//! `continue`, which the API allows).
//!
//! Test controls: [`KubeApiDouble::apply`] / [`KubeApiDouble::delete`] change objects as
//! controllers and kubelets would, [`KubeApiDouble::disconnect_watches`] ends every open
//! watch, [`KubeApiDouble::compact`] drops the retained history (a later watch from an older
//! version gets 410 Gone), and [`KubeApiDouble::requests`] shows what clients asked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, WatchEvent};
use k8s_openapi::{Metadata, Resource};
use picket_common::server::{ListenerSettings, TlsServer, serve_tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls_pki_types::PrivateKeyDer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The token clients must present.
pub const API_TOKEN: &str = "controller.service-account.token";

/// How many events of each resource are retained for watches (older ones need a re-list).
const HISTORY: usize = 10_000;

/// One resource the double serves.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// The collection's key: the plural, and for custom resources `plural.group`.
    key: &'static str,
    /// The group of a custom resource, served only while its CRD is installed.
    crd: Option<&'static str>,
    /// `/api/v1` or `/apis/<group>/<version>`.
    prefix: &'static str,
    plural: &'static str,
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

fn kind_of<K: Resource>(namespaced: bool) -> Kind {
    let prefix = if K::GROUP.is_empty() {
        "/api/v1"
    } else if K::GROUP == "discovery.k8s.io" {
        "/apis/discovery.k8s.io/v1"
    } else {
        "/apis/unknown"
    };
    Kind {
        key: K::URL_PATH_SEGMENT,
        crd: None,
        prefix,
        plural: K::URL_PATH_SEGMENT,
        api_version: K::API_VERSION,
        kind: K::KIND,
        namespaced,
    }
}

/// The group of Picket's policy CRD.
pub const PICKET_GROUP: &str = "picket.dev";
/// The group of Istio's security CRDs.
pub const ISTIO_GROUP: &str = "security.istio.io";

/// An AuthorizationPolicy custom resource of `group`.
const fn policy_kind(
    key: &'static str,
    group: &'static str,
    prefix: &'static str,
    api_version: &'static str,
) -> Kind {
    Kind {
        key,
        crd: Some(group),
        prefix,
        plural: "authorizationpolicies",
        api_version,
        kind: "AuthorizationPolicy",
        namespaced: true,
    }
}

fn kinds() -> [Kind; 7] {
    [
        kind_of::<Pod>(true),
        kind_of::<Service>(true),
        kind_of::<EndpointSlice>(true),
        kind_of::<ConfigMap>(true),
        kind_of::<Namespace>(false),
        policy_kind(
            "authorizationpolicies.picket.dev",
            PICKET_GROUP,
            "/apis/picket.dev/v1",
            "picket.dev/v1",
        ),
        policy_kind(
            "authorizationpolicies.security.istio.io",
            ISTIO_GROUP,
            "/apis/security.istio.io/v1",
            "security.istio.io/v1",
        ),
    ]
}

/// The kind of a custom object, by its `apiVersion` and `kind`.
fn custom_kind(object: &Value) -> Option<Kind> {
    kinds().into_iter().find(|k| {
        k.crd.is_some() && object["apiVersion"] == k.api_version && object["kind"] == k.kind
    })
}

/// One open watch.
#[derive(Debug)]
struct Watcher {
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// One resource's objects, history and watches.
#[derive(Debug, Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, event type, object), oldest first.
    history: VecDeque<(u64, &'static str, Value)>,
    /// The oldest version a watch may start from; older ones get 410 Gone.
    floor: u64,
    watchers: Vec<Watcher>,
}

#[derive(Debug, Default)]
struct State {
    version: u64,
    collections: HashMap<&'static str, Collection>,
    requests: Vec<String>,
    /// The groups whose CRDs are installed.
    crds: std::collections::HashSet<&'static str>,
}

/// The running double; dropping it stops it.
#[derive(Debug)]
pub struct KubeApiDouble {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The PEM root to trust for it.
    pub ca_pem: String,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

impl Drop for KubeApiDouble {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn namespace_and_name(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

impl State {
    fn collection(&mut self, key: &str) -> &mut Collection {
        let key = kinds()
            .into_iter()
            .map(|k| k.key)
            .find(|p| *p == key)
            .unwrap_or("unknown");
        self.collections.entry(key).or_default()
    }

    /// Stores `object` (created or replaced) or removes it, records the event and sends it
    /// to the watches of its resource.
    fn change(&mut self, plural: &str, event: &'static str, mut object: Value) -> Value {
        self.version += 1;
        let version = self.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{version:012}"));
        }
        if object["metadata"]["creationTimestamp"].is_null() {
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let key = namespace_and_name(&object);
        let collection = self.collection(plural);
        if event == "DELETED" {
            collection.objects.remove(&key);
        } else {
            collection.objects.insert(key.clone(), object.clone());
        }
        collection
            .history
            .push_back((version, event, object.clone()));
        while collection.history.len() > HISTORY {
            if let Some((v, _, _)) = collection.history.pop_front() {
                collection.floor = v;
            }
        }
        let line = event_line(event, &object);
        collection.watchers.retain(|w| {
            let matches = w.namespace.as_ref().is_none_or(|ns| *ns == key.0);
            !matches || w.tx.send(line.clone()).is_ok()
        });
        object
    }
}

impl KubeApiDouble {
    /// Starts the double on a loopback port with an empty cluster.
    pub async fn start() -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert =
            CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
        let config = ServerConfig::builder_with_provider(picket_common::crypto::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let mut initial = State::default();
        initial.crds.insert(PICKET_GROUP);
        let state = Arc::new(Mutex::new(initial));
        let shutdown = CancellationToken::new();
        let server = TlsServer {
            settings: ListenerSettings::control(),
            side: "kube API double",
            drain_timeout: Duration::from_millis(100),
            max_connection_age: None,
        };
        {
            let state = Arc::clone(&state);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                serve_tls(listener, acceptor, &server, &shutdown, move |_| {
                    let state = Arc::clone(&state);
                    hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(request, &state).await) }
                    })
                })
                .await;
            });
        }
        Ok(Self {
            url,
            ca_pem: ca_cert.pem(),
            state,
            shutdown,
        })
    }

    /// Writes the CA file and token file a client needs into `dir`: (ca file, token file).
    pub fn client_files(
        &self,
        dir: &std::path::Path,
    ) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let ca = dir.join("kube-ca.pem");
        let token = dir.join("kube-token");
        std::fs::write(&ca, &self.ca_pem)?;
        std::fs::write(&token, API_TOKEN)?;
        Ok((ca, token))
    }

    /// Creates or replaces `object` (ADDED or MODIFIED), as a controller or the kubelet would.
    /// Returns the stored object's resourceVersion.
    pub fn apply<K: Resource + Metadata + Serialize>(&self, object: &K) -> Result<u64> {
        let value = serde_json::to_value(object)?;
        let key = namespace_and_name(&value);
        let mut state = lock(&self.state);
        let exists = state
            .collection(K::URL_PATH_SEGMENT)
            .objects
            .contains_key(&key);
        let event = if exists { "MODIFIED" } else { "ADDED" };
        state.change(K::URL_PATH_SEGMENT, event, value);
        Ok(state.version)
    }

    /// Installs the CRD of `group` ([`PICKET_GROUP`], [`ISTIO_GROUP`]): its resources are
    /// served and discovered from now on.
    pub fn install_crd(&self, group: &'static str) {
        lock(&self.state).crds.insert(group);
    }

    /// Creates or replaces a custom object (an AuthorizationPolicy of `picket.dev/v1` or
    /// `security.istio.io/v1`) as `kubectl apply` would; its CRD must be installed.
    pub fn apply_custom(&self, object: &Value) -> Result<u64> {
        let kind = custom_kind(object).context("not a custom resource the double serves")?;
        let mut state = lock(&self.state);
        if !kind.crd.is_some_and(|g| state.crds.contains(g)) {
            anyhow::bail!("the CRD of {} is not installed", kind.api_version);
        }
        let key = namespace_and_name(object);
        let exists = state.collection(kind.key).objects.contains_key(&key);
        let event = if exists { "MODIFIED" } else { "ADDED" };
        state.change(kind.key, event, object.clone());
        Ok(state.version)
    }

    /// Deletes a custom object (DELETED) of `api_version`; an unknown one is an error.
    pub fn delete_custom(&self, api_version: &str, namespace: &str, name: &str) -> Result<()> {
        let kind = custom_kind(&json!({"apiVersion": api_version, "kind": "AuthorizationPolicy"}))
            .context("not a custom resource the double serves")?;
        let mut state = lock(&self.state);
        let key = (namespace.to_owned(), name.to_owned());
        let object = state
            .collection(kind.key)
            .objects
            .get(&key)
            .cloned()
            .with_context(|| format!("no {api_version} AuthorizationPolicy {namespace}/{name}"))?;
        state.change(kind.key, "DELETED", object);
        Ok(())
    }

    /// Deletes an object (DELETED); an unknown one is an error.
    pub fn delete<K: Resource>(&self, namespace: &str, name: &str) -> Result<()> {
        let mut state = lock(&self.state);
        let key = (namespace.to_owned(), name.to_owned());
        let object = state
            .collection(K::URL_PATH_SEGMENT)
            .objects
            .get(&key)
            .cloned()
            .with_context(|| format!("no {} {namespace}/{name}", K::KIND))?;
        state.change(K::URL_PATH_SEGMENT, "DELETED", object);
        Ok(())
    }

    /// The stored object, if any.
    pub fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<K>> {
        let mut state = lock(&self.state);
        let key = (namespace.to_owned(), name.to_owned());
        state
            .collection(K::URL_PATH_SEGMENT)
            .objects
            .get(&key)
            .map(|v| serde_json::from_value(v.clone()).context("stored object"))
            .transpose()
    }

    /// Ends every open watch (their streams close cleanly, as at an API server restart or a
    /// load balancer's idle timeout); clients resume from the last version they saw.
    pub fn disconnect_watches(&self) {
        let mut state = lock(&self.state);
        for collection in state.collections.values_mut() {
            collection.watchers.clear();
        }
    }

    /// Drops the retained history, as etcd compaction does: a watch from a version older than
    /// the current one gets 410 Gone and its client must list again.
    pub fn compact(&self) {
        let mut state = lock(&self.state);
        let version = state.version;
        for collection in state.collections.values_mut() {
            collection.history.clear();
            collection.floor = version;
        }
    }

    /// Sends a BOOKMARK with the current version to every watch that allowed bookmarks.
    pub fn bookmark(&self) {
        let mut state = lock(&self.state);
        let version = state.version.to_string();
        for kind in kinds() {
            let collection = state.collection(kind.key);
            let line = event_line(
                "BOOKMARK",
                &json!({
                    "apiVersion": kind.api_version,
                    "kind": kind.kind,
                    "metadata": {"resourceVersion": version},
                }),
            );
            collection
                .watchers
                .retain(|w| !w.bookmarks || w.tx.send(line.clone()).is_ok());
        }
    }

    /// The requests received so far, as `METHOD path?query`, oldest first.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.state).requests.clone()
    }

    /// How many list (not watch) requests were made for the resource `plural`.
    pub fn lists(&self, plural: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.starts_with("GET ")
                    && r.split('?')
                        .next()
                        .is_some_and(|p| p.ends_with(&format!("/{plural}")))
                    && !r.contains("watch=true")
                    && !r.contains("watch=1")
            })
            .count()
    }

    /// How many watches of the resource `plural` (`plural.group` for a custom resource) are
    /// open now.
    pub fn open_watches(&self, plural: &str) -> usize {
        let mut state = lock(&self.state);
        let collection = state.collection(plural);
        collection.watchers.retain(|w| !w.tx.is_closed());
        collection.watchers.len()
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = Status {
        code: Some(i32::from(code)),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        status: Some("Failure".to_owned()),
        ..Status::default()
    };
    let mut value = serde_json::to_value(&body).unwrap_or_default();
    value["kind"] = json!("Status");
    value["apiVersion"] = json!("v1");
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &value,
    )
}

/// What a path names.
#[derive(Debug)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    for kind in kinds() {
        let Some(rest) = path
            .strip_prefix(kind.prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let target = match (kind.namespaced, parts.as_slice()) {
            (_, [plural]) if *plural == kind.plural => Target {
                kind,
                namespace: None,
                name: None,
            },
            (false, [plural, name]) if *plural == kind.plural => Target {
                kind,
                namespace: None,
                name: Some((*name).to_owned()),
            },
            (true, ["namespaces", ns, plural]) if *plural == kind.plural => Target {
                kind,
                namespace: Some((*ns).to_owned()),
                name: None,
            },
            (true, ["namespaces", ns, plural, name]) if *plural == kind.plural => Target {
                kind,
                namespace: Some((*ns).to_owned()),
                name: Some((*name).to_owned()),
            },
            _ => continue,
        };
        return Some(target);
    }
    None
}

/// API discovery of a custom resource's group version: its `APIResourceList` while the CRD
/// is installed, 404 otherwise; `None` for any other path.
fn discovery(state: &Mutex<State>, path: &str) -> Option<Response<Body>> {
    let kinds: Vec<Kind> = kinds()
        .into_iter()
        .filter(|k| k.crd.is_some() && k.prefix == path)
        .collect();
    let group = kinds.first()?.crd?;
    if !lock(state).crds.contains(group) {
        return Some(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let resources: Vec<Value> = kinds
        .iter()
        .map(|k| {
            json!({"name": k.plural, "singularName": "", "namespaced": k.namespaced,
                   "kind": k.kind, "verbs": ["get", "list", "watch", "create", "update"]})
        })
        .collect();
    let version = kinds.first().map(|k| k.api_version)?;
    Some(respond(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "APIResourceList",
                "groupVersion": version, "resources": resources}),
    ))
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.replace("%2F", "/").replace("%3D", "="))
        })
        .collect()
}

async fn answer(request: Request<Incoming>, state: &Mutex<State>) -> Response<Body> {
    let line = format!(
        "{} {}",
        request.method(),
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    lock(state).requests.push(line);
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {API_TOKEN}").as_bytes());
    if !authorized {
        return status(401, "Unauthorized", "Unauthorized");
    }
    if request.method() == Method::GET
        && let Some(list) = discovery(state, request.uri().path())
    {
        return list;
    }
    let installed = |kind: &Kind| kind.crd.is_none_or(|g| lock(state).crds.contains(g));
    let Some(target) = parse_path(request.uri().path()).filter(|t| installed(&t.kind)) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let q = query(&request);
    for selector in ["labelSelector", "fieldSelector"] {
        if q.get(selector).is_some_and(|s| !s.is_empty()) {
            return status(
                400,
                "BadRequest",
                &format!("{selector} is not implemented by the test double"),
            );
        }
    }
    match (request.method().clone(), &target.name) {
        (Method::GET, None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            watch(state, &target, &q)
        }
        (Method::GET, None) => list(state, &target, &q),
        (Method::GET, Some(name)) => get(state, &target, name),
        (Method::POST, None) => match read_object(request, &target).await {
            Ok(object) => create(state, &target, object),
            Err(message) => status(400, "BadRequest", &message),
        },
        (Method::PUT, Some(name)) => {
            let name = name.clone();
            match read_object(request, &target).await {
                Ok(object) => replace(state, &target, &name, object),
                Err(message) => status(400, "BadRequest", &message),
            }
        }
        _ => status(
            405,
            "MethodNotAllowed",
            "the method is not supported by the test double",
        ),
    }
}

/// The object in the body; an unusable one is the 400 message.
async fn read_object(request: Request<Incoming>, target: &Target) -> Result<Value, String> {
    let bad = |m: String| m;
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| bad(e.to_string()))?
        .to_bytes();
    let mut object: Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    if object["kind"] != json!(target.kind.kind)
        || object["apiVersion"] != json!(target.kind.api_version)
    {
        return Err(bad(format!("the body is not a {}", target.kind.kind)));
    }
    if object["metadata"]["name"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return Err(bad("metadata.name is required".to_owned()));
    }
    if let Some(ns) = &target.namespace {
        if object["metadata"]["namespace"]
            .as_str()
            .is_some_and(|n| n != ns)
        {
            return Err(bad(
                "the namespace of the body does not match the request".to_owned()
            ));
        }
        object["metadata"]["namespace"] = json!(ns);
    }
    Ok(object)
}

fn current(state: &mut State, target: &Target) -> Vec<Value> {
    state
        .collection(target.kind.key)
        .objects
        .iter()
        .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|t| t == ns))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The requested version; an unreadable one is the 400 message.
fn parse_version(q: &HashMap<String, String>) -> Result<Option<u64>, String> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid resourceVersion {v:?}")),
    }
}

fn list(state: &Mutex<State>, target: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let mut state = lock(state);
    let version = match parse_version(q) {
        Ok(v) => v,
        Err(message) => return status(400, "BadRequest", &message),
    };
    if let Some(v) = version
        && v < state.collection(target.kind.key).floor
    {
        return status(410, "Expired", &format!("too old resource version: {v}"));
    }
    let items = current(&mut state, target);
    respond(
        StatusCode::OK,
        &json!({
            "apiVersion": target.kind.api_version,
            "kind": format!("{}List", target.kind.kind),
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        }),
    )
}

fn get(state: &Mutex<State>, target: &Target, name: &str) -> Response<Body> {
    let mut state = lock(state);
    let key = (
        target.namespace.clone().unwrap_or_default(),
        name.to_owned(),
    );
    match state.collection(target.kind.key).objects.get(&key) {
        Some(object) => respond(StatusCode::OK, object),
        None => status(
            404,
            "NotFound",
            &format!("{} {name:?} not found", target.kind.plural),
        ),
    }
}

fn create(state: &Mutex<State>, target: &Target, object: Value) -> Response<Body> {
    let mut state = lock(state);
    let key = namespace_and_name(&object);
    if state.collection(target.kind.key).objects.contains_key(&key) {
        return status(
            409,
            "AlreadyExists",
            &format!("{} {:?} already exists", target.kind.plural, key.1),
        );
    }
    let stored = state.change(target.kind.key, "ADDED", object);
    respond(StatusCode::CREATED, &stored)
}

fn replace(state: &Mutex<State>, target: &Target, name: &str, object: Value) -> Response<Body> {
    let mut state = lock(state);
    let key = namespace_and_name(&object);
    if key.1 != name {
        return status(
            400,
            "BadRequest",
            "the name of the body does not match the request",
        );
    }
    let Some(existing) = state.collection(target.kind.key).objects.get(&key) else {
        return status(
            404,
            "NotFound",
            &format!("{} {name:?} not found", target.kind.plural),
        );
    };
    if existing["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        );
    }
    let stored = state.change(target.kind.key, "MODIFIED", object);
    respond(StatusCode::OK, &stored)
}

fn watch(state: &Mutex<State>, target: &Target, q: &HashMap<String, String>) -> Response<Body> {
    let version = match parse_version(q) {
        Ok(v) => v,
        Err(message) => return status(400, "BadRequest", &message),
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    {
        let mut state = lock(state);
        let objects = current(&mut state, target);
        let collection = state.collection(target.kind.key);
        let in_scope = |object: &Value| {
            target
                .namespace
                .as_ref()
                .is_none_or(|ns| namespace_and_name(object).0 == *ns)
        };
        match version {
            // No version: the current state as ADDED events, then changes.
            None => {
                for object in &objects {
                    let _ = tx.send(event_line("ADDED", object));
                }
            }
            Some(v) if v < collection.floor => {
                let gone = WatchEvent::<Pod>::ErrorStatus(Status {
                    code: Some(410),
                    reason: Some("Expired".to_owned()),
                    message: Some(format!(
                        "too old resource version: {v} ({})",
                        collection.floor
                    )),
                    status: Some("Failure".to_owned()),
                    ..Status::default()
                });
                let mut value = serde_json::to_value(&gone).unwrap_or_default();
                value["object"]["kind"] = json!("Status");
                value["object"]["apiVersion"] = json!("v1");
                let mut line = value.to_string();
                line.push('\n');
                let _ = tx.send(Bytes::from(line));
                drop(tx);
                return stream_response(rx, None);
            }
            Some(v) => {
                for (_, event, object) in collection
                    .history
                    .iter()
                    .filter(|(ev, _, o)| *ev > v && in_scope(o))
                {
                    let _ = tx.send(event_line(event, object));
                }
            }
        }
        collection.watchers.push(Watcher {
            namespace: target.namespace.clone(),
            bookmarks,
            tx,
        });
    }
    stream_response(rx, timeout)
}

fn stream_response(
    rx: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        let next = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten(),
            None => rx.recv().await,
        };
        next.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
