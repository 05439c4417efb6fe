//! Authorization in the sidecar: the active policy, its hot reload, and the one decision record
//! every enforcement point produces.
//!
//! The compiled policy for this workload sits in an `ArcSwap`; the data path loads it per
//! request (or per TCP connection), so a reload reaches long-lived connections at their next
//! request. A reload that fails keeps the last good policy in force.
//!
//! Two sources make one set: the policy files (as on a VM) and, in cluster mode, the policy
//! objects the controller sends ([`PolicyStore::set_cluster`]). Every (re)load reads the files
//! and takes the controller's last set, and loads both together with the one loader: the union
//! of both, checked as one (a name defined in both is a duplicate, as across two files), all
//! or nothing.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use picket_common::policies::ClusterPolicy;
use picket_common::text::{TextError, read_text};
use picket_policy::{Decision, LoadOptions, PolicySet, Workload, WorkloadPolicies};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The policy in force for this workload, with what it was built from.
#[derive(Debug)]
pub struct ActivePolicy {
    /// Compiled and indexed for this workload.
    pub compiled: WorkloadPolicies,
    /// Every loaded policy (all workloads), for `/policy`.
    pub set: PolicySet,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// The sources of the policy objects from the controller (cluster mode).
    pub cluster: Vec<String>,
    /// The `RequestAuthentication` rules that select this workload, ready for requests.
    pub authn: crate::jwt::Authenticator,
}

/// Why the policy files could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why: I/O, too large, or not UTF-8 (with the byte offset).
        source: TextError,
    },
    /// The policy text is invalid; every problem is listed with its location.
    #[error("{0}")]
    Invalid(picket_policy::LoadErrors),
    /// The `RequestAuthentication` documents for this workload cannot be put in force.
    #[error("{0}")]
    Authn(#[from] crate::jwt::AuthnError),
}

/// Loads, holds and reloads the workload's policy.
#[derive(Debug)]
pub struct PolicyStore {
    path: Option<PathBuf>,
    workload: Workload,
    options: LoadOptions,
    active: ArcSwap<ActivePolicy>,
    /// The controller's last policy set that loaded (cluster mode; empty otherwise).
    cluster: ArcSwap<Vec<ClusterPolicy>>,
    /// The controller's newest set when it did not load (refused whole): tried again first at
    /// every reload, and dropped once it loads or a newer set arrives.
    refused: Mutex<Option<Arc<Vec<ClusterPolicy>>>>,
    /// One (re)load at a time, so a slower load never replaces a newer one.
    reloading: Mutex<()>,
    metrics: Arc<Metrics>,
    jwt: Jwt,
}

/// What request authentication is built with.
#[derive(Debug, Clone)]
pub struct Jwt {
    /// The sidecar's `jwt:` settings.
    pub settings: Arc<crate::jwt::JwtSettings>,
    /// The JWKS fetcher, or why there is none (a `jwksUri` is then a load error).
    pub registry: Result<Arc<crate::jwt::JwksRegistry>, String>,
}

impl Jwt {
    /// Request authentication with inline key sets only (`jwksUri` is a load error).
    pub fn inline_only(settings: crate::jwt::JwtSettings) -> Self {
        Self {
            settings: Arc::new(settings),
            registry: Err("this program does not fetch keys".into()),
        }
    }

    /// Request authentication fetching keys with `settings`; when its trust roots cannot be
    /// read, `jwksUri` rules are load errors that say why.
    pub fn fetching(settings: crate::jwt::JwtSettings, metrics: &Arc<Metrics>) -> Self {
        let settings = Arc::new(settings);
        let registry = std::fs::read(&settings.trust_roots)
            .map_err(|e| format!("cannot read {}: {e}", settings.trust_roots.display()))
            .and_then(|pem| crate::jwt::jwks::client_config(&pem))
            .map(|tls| {
                crate::jwt::JwksRegistry::new(
                    Arc::clone(&settings),
                    Arc::new(tls),
                    Arc::clone(metrics),
                )
            })
            .map_err(|e| format!("jwt.trust_roots: {e}"));
        Self { settings, registry }
    }
}

/// Lists the policy files under `path`: the file itself, or the `.yaml`/`.yml` files of a
/// directory, sorted, skipping dot-entries (Kubernetes ConfigMap mounts keep their versioned
/// data behind `..data`; the visible names are symlinks into it).
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyLoadError> {
    let read_err = |source: std::io::Error| PolicyLoadError::Read {
        path: path.to_owned(),
        source: source.into(),
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let p = entry.path();
        // Follows symlinks, so ConfigMap entries count as files.
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The policy files under some paths, read: each at most `LoadOptions::max_file_bytes` and
/// UTF-8 (a bad byte is reported with its offset). The sidecar and the `picket policy` and
/// `picket analyze` commands read policies through this one function.
#[derive(Debug, Default)]
pub struct PolicyTexts {
    /// The files, in the order read.
    pub files: Vec<PathBuf>,
    /// Each file's name (its path, as errors show it) and text.
    texts: Vec<(String, String)>,
}

impl PolicyTexts {
    /// Reads every policy file of each path in `paths` (see [`policy_files`]).
    pub fn read(paths: &[PathBuf], options: &LoadOptions) -> Result<Self, PolicyLoadError> {
        let limit = u64::try_from(options.max_file_bytes).unwrap_or(u64::MAX);
        let mut this = Self::default();
        for path in paths {
            for f in policy_files(path)? {
                let text = read_text(&f, limit).map_err(|source| PolicyLoadError::Read {
                    path: f.clone(),
                    source,
                })?;
                this.texts.push((f.display().to_string(), text));
                this.files.push(f);
            }
        }
        Ok(this)
    }

    /// The texts as the policy loader takes them.
    pub fn sources(&self) -> Vec<picket_policy::Source<'_>> {
        self.texts
            .iter()
            .map(|(name, text)| picket_policy::Source { name, text })
            .collect()
    }
}

/// Reads and compiles every policy file under `path`.
pub fn load_policy(
    path: &Path,
    options: &LoadOptions,
) -> Result<(PolicySet, Vec<PathBuf>), PolicyLoadError> {
    let texts = PolicyTexts::read(&[path.to_owned()], options)?;
    let set = picket_policy::load(&texts.sources(), options).map_err(PolicyLoadError::Invalid)?;
    Ok((set, texts.files))
}

impl PolicyStore {
    /// Loads the policy at `path` (or none: the mesh default then decides). A load error at
    /// startup is fatal: the sidecar never starts with a policy it could not read.
    pub fn new(
        path: Option<PathBuf>,
        workload: Workload,
        options: LoadOptions,
        metrics: Arc<Metrics>,
        jwt: Jwt,
    ) -> Result<Self, PolicyLoadError> {
        let active = Self::build(path.as_deref(), &[], &workload, &options, &jwt)?;
        let store = Self {
            path,
            workload,
            options,
            active: ArcSwap::from_pointee(active),
            cluster: ArcSwap::from_pointee(Vec::new()),
            refused: Mutex::new(None),
            reloading: Mutex::new(()),
            metrics,
            jwt,
        };
        store.log_active("policy loaded");
        Ok(store)
    }

    fn build(
        path: Option<&Path>,
        cluster: &[ClusterPolicy],
        workload: &Workload,
        options: &LoadOptions,
        jwt: &Jwt,
    ) -> Result<ActivePolicy, PolicyLoadError> {
        let texts = match path {
            Some(p) => PolicyTexts::read(&[p.to_owned()], options)?,
            None => PolicyTexts::default(),
        };
        let set = if texts.files.is_empty() && cluster.is_empty() {
            PolicySet::empty(options)
        } else {
            let mut sources = texts.sources();
            sources.extend(cluster.iter().map(|p| picket_policy::Source {
                name: &p.source,
                text: &p.text,
            }));
            picket_policy::load(&sources, options).map_err(PolicyLoadError::Invalid)?
        };
        let files = texts.files;
        let compiled = set.for_workload(workload);
        let authn = crate::jwt::Authenticator::build(
            compiled.authentications(),
            jwt.registry.as_deref().map_err(String::as_str),
            Arc::clone(&jwt.settings),
        )?;
        Ok(ActivePolicy {
            compiled,
            set,
            files,
            cluster: cluster.iter().map(|p| p.source.clone()).collect(),
            authn,
        })
    }

    fn log_active(&self, what: &str) {
        let active = self.active.load();
        tracing::info!(
            files = active.files.len(),
            cluster_objects = active.cluster.len(),
            policies = active.set.policies().count(),
            hash = %active.set.sources_hash(),
            "{what}"
        );
    }

    /// The policy in force.
    pub fn current(&self) -> arc_swap::Guard<Arc<ActivePolicy>> {
        self.active.load()
    }

    /// Decides `req` with the policy in force and records the decision in the metrics.
    pub fn decide(&self, req: &picket_policy::Request<'_>) -> Decision {
        let decision = self.active.load().compiled.evaluate(req);
        self.metrics.authz_decision(&decision);
        decision
    }

    /// Decides a connection of this workload to a destination outside the mesh with the
    /// egress policies in force, `default` (from `outbound.passthrough`) applying when no
    /// enforced egress ALLOW policy selects the workload; counted like every decision.
    pub fn decide_egress(
        &self,
        req: &picket_policy::EgressRequest<'_>,
        default: picket_policy::DefaultAction,
    ) -> Decision {
        let decision = self.active.load().compiled.evaluate_egress(req, default);
        self.metrics.authz_decision(&decision);
        decision
    }

    /// Whether any egress policy (enforced or dry-run) selects this workload.
    pub fn has_egress_policies(&self) -> bool {
        self.active.load().compiled.has_egress_policies()
    }

    /// Re-reads the policy files and loads them with the controller's set: its newest one
    /// when that was refused (it may load now, for example once a broken file is fixed), else,
    /// or when it still does not load, the last set that loaded. On error the policy in force
    /// stays, the failure is counted and logged with its location, and the error is returned.
    pub fn reload(&self) -> Result<(), PolicyLoadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(newest) = refused {
            match self.build_with(&newest) {
                Ok(active) => {
                    self.accept_cluster(
                        newest,
                        active,
                        "policy reloaded with the controller's newest set",
                    );
                    return Ok(());
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "the controller's newest policy set still does not load; reloading with its last good set"
                ),
            }
        }
        let cluster = self.cluster.load_full();
        match self.build_with(&cluster) {
            Ok(active) => {
                self.swap(active, "policy reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.policy_reload_failures.inc();
                tracing::error!(error = %e, "policy reload failed; the last good policy stays in force");
                Err(e)
            }
        }
    }

    /// Installs the controller's policy set (the whole set for this namespace, replacing the
    /// last one) loaded with the files: the same load, swap and failure handling as a file
    /// change, all or nothing. A set that does not load is refused whole: the policy in force
    /// and the last set that loaded stay (a later file reload uses them), the failure is
    /// counted and logged, and the error is returned. The refused set is tried again first at
    /// the next reload, so one that failed only because of a broken file loads once the file
    /// is fixed; a newer set from the controller replaces it.
    pub fn set_cluster(&self, policies: Vec<ClusterPolicy>) -> Result<(), PolicyLoadError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let policies = Arc::new(policies);
        match self.build_with(&policies) {
            Ok(active) => {
                self.accept_cluster(policies, active, "policy reloaded");
                Ok(())
            }
            Err(e) => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(policies);
                self.metrics.policy_reload_failures.inc();
                tracing::error!(
                    error = %e,
                    "the policy set from the controller does not load and was refused whole; the last good policy and set stay in force"
                );
                Err(e)
            }
        }
    }

    /// Builds the policy from the files and `cluster`.
    fn build_with(&self, cluster: &[ClusterPolicy]) -> Result<ActivePolicy, PolicyLoadError> {
        Self::build(
            self.path.as_deref(),
            cluster,
            &self.workload,
            &self.options,
            &self.jwt,
        )
    }

    /// Puts `active`, built with the controller's `set`, in force; `set` becomes the last
    /// good set and no set is refused any more.
    fn accept_cluster(&self, set: Arc<Vec<ClusterPolicy>>, active: ActivePolicy, what: &str) {
        self.cluster.store(set);
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.swap(active, what);
    }

    /// Puts `active` in force, logging `what` when its sources differ from the last.
    fn swap(&self, active: ActivePolicy, what: &str) {
        let changed = active.set.sources_hash() != self.active.load().set.sources_hash();
        self.active.store(Arc::new(active));
        if changed {
            self.log_active(what);
        }
    }

    /// Starts reloading on SIGHUP and whenever the watched directory changes (debounced), until
    /// `shutdown`. The signal handler and the file watch are in place when this returns, so a
    /// caller can announce readiness right after.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = self.path.as_deref().and_then(|path| watch_dir(path, tx));
        tokio::spawn(async move {
            // Dropping the watcher stops it; keep it for the life of the loop.
            let _watcher = watcher;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    Some(()) = rx.recv() => {
                        // Debounce: editors and ConfigMap updates touch several entries at once.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        while rx.try_recv().is_ok() {}
                    }
                    Some(()) = async {
                        match hup.as_mut() {
                            Some(h) => h.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::info!("SIGHUP: reloading policy");
                    }
                }
                // Reading and compiling many policies takes a while: keep it off the
                // request-serving threads.
                let this = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || this.reload()).await;
            }
        })
    }
}

/// Watches the directory that holds `path` (the directory itself, or a file's parent) so that
/// atomic renames and ConfigMap symlink swaps are seen. Only changes count: reading the files
/// (as every reload does) must not schedule another reload.
fn watch_dir(path: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(
            event.kind,
            notify::EventKind::Create(_)
                | notify::EventKind::Modify(_)
                | notify::EventKind::Remove(_)
        ) {
            // A full channel already has a reload pending.
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policy directory; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}

/// A fresh request id for deny records: 16 hex digits.
pub fn request_id() -> String {
    let mut b = [0u8; 8];
    // A failed draw leaves zeros; the id only correlates a 403 with its log line.
    let _ = picket_common::crypto::fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The shadow (dry-run) verdicts of a decision, rendered for a log field.
pub fn shadows_text(d: &Decision) -> String {
    d.shadows
        .iter()
        .map(|s| match s.rule {
            Some(r) => format!("{} rule {r}: would {}", s.policy, s.would),
            None => format!("{}: would {}", s.policy, s.would),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Logs a decision as the one explained record: denials always, allows only when a dry-run
/// policy would have decided otherwise.
pub fn log_decision(d: &Decision, peer: &str, what: &str, request_id: Option<&str>) {
    // Empty fields are left out of the record rather than logged as "".
    let policy = d.policy.as_ref().map(tracing::field::display);
    let shadows = (!d.shadows.is_empty()).then(|| shadows_text(d));
    if d.verdict == picket_policy::Verdict::Deny {
        tracing::warn!(
            verdict = %d.verdict,
            reason = %d.reason,
            policy,
            rule = d.rule,
            shadows,
            peer,
            request = what,
            request_id,
            "authorization denied"
        );
    } else if shadows.is_some() {
        tracing::info!(
            verdict = %d.verdict,
            reason = %d.reason,
            policy,
            rule = d.rule,
            shadows,
            peer,
            request = what,
            "dry-run policy would change this decision"
        );
    }
}

/// The HTTP answer to a denied request: 403 with a JSON body, or for gRPC a trailers-only
/// response with status PERMISSION_DENIED. `details` adds policy, rule and reason.
pub fn deny_response(
    d: &Decision,
    request_id: &str,
    grpc: bool,
    details: bool,
) -> http::Response<crate::forward::Body> {
    let mut resp = deny_answer(d, request_id, grpc, details);
    resp.extensions_mut()
        .insert(crate::forward::SidecarAnswer::Own);
    resp
}

/// The body and head of [`deny_response`].
fn deny_answer(
    d: &Decision,
    request_id: &str,
    grpc: bool,
    details: bool,
) -> http::Response<crate::forward::Body> {
    use bytes::Bytes;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use http_body_util::{Empty, Full};

    let summary = if details {
        match (&d.policy, d.rule) {
            (Some(p), Some(r)) => format!("denied by policy {p} rule {r} ({})", d.reason),
            (Some(p), None) => format!("denied by policy {p} ({})", d.reason),
            _ => format!("denied ({})", d.reason),
        }
    } else {
        "denied".to_owned()
    };
    if grpc {
        let mut resp = http::Response::new(crate::forward::boxed(Empty::<Bytes>::new()));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        let message: String = format!("picket: {summary}; request id {request_id}")
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        return resp;
    }
    let body = if details {
        serde_json::json!({
            "error": "forbidden",
            "policy": d.policy.as_ref().map(ToString::to_string),
            "rule": d.rule,
            "reason": d.reason.as_str(),
            "request_id": request_id,
        })
    } else {
        serde_json::json!({ "error": "forbidden", "request_id": request_id })
    };
    let mut resp = http::Response::new(crate::forward::boxed(Full::new(Bytes::from(format!(
        "{body}\n"
    )))));
    *resp.status_mut() = http::StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy_text(name: &str) -> String {
        format!(
            "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{{ source: {{ principals: [\"*\"] }} }}]\n"
        )
    }

    fn cluster(name: &str) -> ClusterPolicy {
        ClusterPolicy {
            source: format!("picket.dev/v1 AuthorizationPolicy shop/{name}"),
            text: policy_text(name),
        }
    }

    fn store(dir: &Path) -> PolicyStore {
        PolicyStore::new(
            Some(dir.to_owned()),
            Workload {
                namespace: "shop".into(),
                labels: Default::default(),
            },
            LoadOptions::default(),
            Arc::new(Metrics::new()),
            Jwt::inline_only(crate::jwt::JwtSettings::default()),
        )
        .unwrap()
    }

    /// The names of the policies in force, sorted.
    fn in_force(store: &PolicyStore) -> Vec<String> {
        let mut names: Vec<String> = store
            .current()
            .set
            .policies()
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_controller_set_that_does_not_load_is_refused_whole_and_later_reloads_work() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), policy_text("file-one")).unwrap();
        let store = store(dir.path());
        store.set_cluster(vec![cluster("c1")]).unwrap();
        assert_eq!(in_force(&store), ["c1", "file-one"]);

        // A set with one good object and one broken one: nothing of it is applied.
        let broken = ClusterPolicy {
            source: "picket.dev/v1 AuthorizationPolicy shop/broken".into(),
            text: "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: broken }\nspec: { action: MAYBE }\n".into(),
        };
        let err = store
            .set_cluster(vec![cluster("c2"), broken.clone()])
            .unwrap_err();
        assert!(err.to_string().contains("shop/broken"), "{err}");
        assert_eq!(in_force(&store), ["c1", "file-one"]);
        assert_eq!(
            store.current().cluster,
            ["picket.dev/v1 AuthorizationPolicy shop/c1"]
        );
        assert_eq!(store.metrics.policy_reload_failures.get(), 1);

        // A file change reloads with the last good set, and so does SIGHUP.
        std::fs::write(dir.path().join("b.yaml"), policy_text("file-two")).unwrap();
        store.reload().unwrap();
        assert_eq!(in_force(&store), ["c1", "file-one", "file-two"]);
        store.reload().unwrap();

        // A set that duplicates a file's policy is refused as well; the next good set loads.
        assert!(store.set_cluster(vec![cluster("file-two")]).is_err());
        assert_eq!(in_force(&store), ["c1", "file-one", "file-two"]);
        store.set_cluster(vec![cluster("c3")]).unwrap();
        assert_eq!(in_force(&store), ["c3", "file-one", "file-two"]);
        store.reload().unwrap();
        assert_eq!(in_force(&store), ["c3", "file-one", "file-two"]);
    }

    #[test]
    fn a_set_refused_for_a_broken_file_loads_once_the_file_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, policy_text("file-one")).unwrap();
        let store = store(dir.path());
        store.set_cluster(vec![cluster("c1")]).unwrap();

        std::fs::write(&file, "apiVersion: [").unwrap();
        assert!(store.reload().is_err());
        // The set is good but cannot load with the broken file: refused, nothing changes.
        assert!(store.set_cluster(vec![cluster("c2")]).is_err());
        assert_eq!(in_force(&store), ["c1", "file-one"]);

        std::fs::write(&file, policy_text("file-one")).unwrap();
        store.reload().unwrap();
        assert_eq!(in_force(&store), ["c2", "file-one"]);
        assert_eq!(
            store.current().cluster,
            ["picket.dev/v1 AuthorizationPolicy shop/c2"]
        );
    }
}
