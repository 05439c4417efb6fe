//! Sidecar injection: adds Picket to Kubernetes workloads, and takes it out again.
//!
//! One function, [`inject`], is used by both `picket inject` (manifests in, manifests out) and
//! the admission webhook (`picket injector serve`, which sends the difference as a JSON
//! patch), so the two can never disagree. Objects are handled as `serde_json::Value` so that
//! every field Picket does not know passes through untouched; YAML is read and written only
//! by [`parse_manifests`] and [`print_manifests`].
//!
//! What an injected pod gets (all names start with `picket-`, so [`uninject`] finds exactly
//! what was added):
//!
//! | what | why |
//! |---|---|
//! | init container `picket-init`, first | runs `picket iptables` (NET_ADMIN and NET_RAW only) so the app's TCP goes through the sidecar |
//! | init container `picket-proxy` with `restartPolicy: Always` (a native sidecar), second | starts before the app's init containers and the app, and its startup probe on `/ready` holds them back until it has a certificate; a Job completes when its app exits |
//! | volume `picket-config` (downward API) | the sidecar configuration, rendered by the injector into the pod annotation `picket.dev/sidecar-config` |
//! | volume `picket-token` (projected service-account token, audience `picket-ca`, 1 h) | the credential the CA checks with the TokenReview API; the kubelet keeps it fresh |
//! | volume `picket-trust-bundle` (ConfigMap `picket-trust-bundle`) | the roots that sign the CA's certificate and every peer's |
//! | volume `picket-policy` (ConfigMap `picket-policy`) | the authorization policy |
//! | annotation `picket.dev/injected: <version>` | marks the pod as injected: injecting again first removes the old sidecar, so injecting twice equals injecting once |
//! | the app's `httpGet`, `tcpSocket` and `grpc` probes rewritten to the sidecar's health listener (port 7192), originals in `picket.dev/original-probes` | the kubelet probes from outside the pod, where the app's ports accept only mTLS; the health listener carries each probe to the app inside the pod |
//! | annotations `prometheus.io/scrape`, `/port`, `/path` (listed in `picket.dev/added-annotations`) | scrapers find the sidecar's metrics; added only to pods with no `prometheus.io/*` annotation |
//!
//! The sidecar learns its namespace and service account from the downward API
//! (`PICKET_NAMESPACE`, `PICKET_SERVICE_ACCOUNT`), so one rendering serves a manifest whatever
//! namespace it is applied to. Its environment also carries the allocator setting
//! [`ALLOCATOR_ENV`].
//!
//! A pod is left alone when it opts out (`picket.dev/inject: "false"` as an annotation or a
//! label) or uses the host's network namespace (the iptables step would rewrite the node's
//! rules). `picket.dev/exclude-inbound-ports`, `picket.dev/exclude-outbound-ports` and
//! `picket.dev/exclude-outbound-cidrs` (comma-separated) keep traffic out of the redirect.
//! `picket.dev/rewrite-probes: "false"` keeps the app's probes as they are;
//! `picket.dev/inbound-mode: permissive` (or `picket.dev/permissive-ports`) accepts plaintext
//! as well as mTLS for a migration.

pub use picket_common::Cidr;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// The version written into [`STATUS_ANNOTATION`].
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Present on every injected pod; its value is the injector's version.
pub const STATUS_ANNOTATION: &str = "picket.dev/injected";
/// `"false"` (as an annotation or a label) keeps the sidecar out of a pod.
pub const INJECT_ANNOTATION: &str = "picket.dev/inject";
/// The rendered sidecar configuration, mounted into the sidecar by the downward API.
pub const CONFIG_ANNOTATION: &str = "picket.dev/sidecar-config";
/// Inbound ports (comma-separated) that bypass the sidecar.
pub const EXCLUDE_INBOUND_PORTS_ANNOTATION: &str = "picket.dev/exclude-inbound-ports";
/// Outbound ports (comma-separated) that bypass the sidecar.
pub const EXCLUDE_OUTBOUND_PORTS_ANNOTATION: &str = "picket.dev/exclude-outbound-ports";
/// Outbound destinations (comma-separated CIDRs) that bypass the sidecar.
pub const EXCLUDE_OUTBOUND_CIDRS_ANNOTATION: &str = "picket.dev/exclude-outbound-cidrs";

/// `"false"` keeps the app's probes as they are.
pub const REWRITE_PROBES_ANNOTATION: &str = "picket.dev/rewrite-probes";
/// The app's probes as they were before rewriting (JSON: container -> probe kind -> probe),
/// restored exactly by [`uninject`].
pub const ORIGINAL_PROBES_ANNOTATION: &str = "picket.dev/original-probes";
/// `strict` (mTLS only) or `permissive` (plaintext as well) for the whole pod.
pub const INBOUND_MODE_ANNOTATION: &str = "picket.dev/inbound-mode";
/// Ports (comma-separated) that accept plaintext as well as mTLS.
pub const PERMISSIVE_PORTS_ANNOTATION: &str = "picket.dev/permissive-ports";
/// The other annotations injection added (comma-separated keys), removed by [`uninject`].
pub const ADDED_ANNOTATIONS_ANNOTATION: &str = "picket.dev/added-annotations";
/// The scrape annotations added to pods that have none of their own.
const SCRAPE_ANNOTATIONS: [(&str, &str); 3] = [
    ("prometheus.io/scrape", "true"),
    ("prometheus.io/port", "7191"),
    ("prometheus.io/path", "/metrics"),
];

/// The sidecar container.
pub const PROXY_CONTAINER: &str = "picket-proxy";
/// The iptables init container.
pub const INIT_CONTAINER: &str = "picket-init";
/// The volume holding the rendered configuration.
pub const CONFIG_VOLUME: &str = "picket-config";
/// The volume holding the projected service-account token.
pub const TOKEN_VOLUME: &str = "picket-token";
/// The volume holding the trust bundle.
pub const TRUST_BUNDLE_VOLUME: &str = "picket-trust-bundle";
/// The volume holding the authorization policy.
pub const POLICY_VOLUME: &str = "picket-policy";
/// The ConfigMap with the trust bundle (key `bundle.pem`), in the pod's namespace.
pub const TRUST_BUNDLE_CONFIGMAP: &str = "picket-trust-bundle";
/// The ConfigMap with the policy, in the pod's namespace.
pub const POLICY_CONFIGMAP: &str = "picket-policy";

/// The sidecar's outbound port (the iptables redirect target for the app's connections).
pub const OUTBOUND_PORT: u16 = 7140;
/// The sidecar's inbound mTLS port (the redirect target for connections to the pod).
pub const INBOUND_PORT: u16 = 7143;
/// The sidecar's admin port (probes, metrics); never redirected.
pub const ADMIN_PORT: u16 = 7191;
/// The sidecar's health port (rewritten kubelet probes); never redirected.
pub const HEALTH_PORT: u16 = 7192;
/// Where the sidecar's health listener serves a rewritten probe: `<prefix><container>/<kind>`
/// (the proxy's `health::PATH_PREFIX`; a test keeps the two equal).
pub const HEALTH_PATH_PREFIX: &str = "/app-health/";
/// The CA API's port.
pub const CA_PORT: u16 = 7443;

/// Where the sidecar finds its files.
const CONFIG_DIR: &str = "/etc/picket/config";
const CONFIG_FILE: &str = "sidecar.yaml";
const TOKEN_DIR: &str = "/var/run/secrets/picket";
const TOKEN_FILE: &str = "token";
const TRUST_DIR: &str = "/etc/picket/trust";
const TRUST_FILE: &str = "bundle.pem";
const POLICY_DIR: &str = "/etc/picket/policy";
const POLICY_FILE: &str = "policy.yaml";

/// Lifetime asked for the projected token; the kubelet renews it at 80 %.
const TOKEN_EXPIRATION_SECONDS: u32 = 3600;

const RESERVED_CONTAINERS: [&str; 2] = [INIT_CONTAINER, PROXY_CONTAINER];
const RESERVED_VOLUMES: [&str; 4] = [
    CONFIG_VOLUME,
    TOKEN_VOLUME,
    TRUST_BUNDLE_VOLUME,
    POLICY_VOLUME,
];
const ADDED_ANNOTATIONS: [&str; 4] = [
    STATUS_ANNOTATION,
    CONFIG_ANNOTATION,
    ORIGINAL_PROBES_ANNOTATION,
    ADDED_ANNOTATIONS_ANNOTATION,
];
const PROBE_KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];

/// What the injector puts into pods.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The image of the sidecar (`picket-sidecar`, whose entry point takes the `proxy`
    /// command; the `picket` image takes the same arguments). Never `latest`.
    pub image: String,
    /// The image of the iptables step (the Picket binary with the iptables tools).
    pub init_image: String,
    /// `imagePullPolicy` of both containers.
    pub image_pull_policy: String,
    /// The UID the sidecar runs as, which the iptables rules exempt.
    pub proxy_uid: u32,
    /// The CA API as the sidecar reaches it.
    pub ca_url: String,
    /// The trust domain of the mesh.
    pub trust_domain: picket_ca::TrustDomain,
    /// The audience of the projected service-account token (the CA requires it).
    pub token_audience: String,
    /// Inbound ports excluded in every pod (the admin port always is).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound ports excluded in every pod.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound CIDRs excluded in every pod.
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Destinations inside the mesh (pod and Service networks): carried over mTLS, any
    /// workload identity of the trust domain accepted.
    pub meshed_cidrs: Vec<Cidr>,
    /// Whether other destinations pass as plain TCP (`true`) or are refused.
    pub egress_allowed: bool,
    /// Whether passthrough to a cloud metadata address is refused (`true`, the sidecar's
    /// default) or only alerted (`outbound.metadata: alert`).
    pub block_metadata: bool,
    /// The sidecar's CPU request.
    pub proxy_cpu_request: String,
    /// The sidecar's memory request.
    pub proxy_memory_request: String,
    /// Accept plaintext as well as mTLS in every pod (for a migration into the mesh).
    pub permissive: bool,
    /// Rewrite the app's kubelet probes to the sidecar's health listener.
    pub rewrite_probes: bool,
    /// Add `prometheus.io/*` scrape annotations for the sidecar's metrics.
    pub scrape_annotations: bool,
    /// The controller the sidecars subscribe to for their destinations (cluster mode: the
    /// sidecar's `controller:` section); `None` keeps them in file mode.
    pub controller: Option<ControllerSettings>,
    /// Whether an endpoint without a sidecar is reached in plaintext (`true`,
    /// `outbound.unmeshed: plaintext`) or refused (`false`, the sidecar's default).
    pub unmeshed_plaintext: bool,
}

/// Where injected sidecars find `picket controller`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerSettings {
    /// `host:port` of the discovery service (the controller's Service, port 7150).
    pub address: String,
    /// The SPIFFE ID the controller must present; in the mesh's trust domain.
    pub identity: picket_ca::SpiffeId,
}

/// The private address ranges (RFC 1918, RFC 4193), where clusters put pods and Services:
/// the default meshed destinations.
const PRIVATE_NETWORKS: [(IpAddr, u8); 4] = [
    (IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 0)), 8),
    (IpAddr::V4(std::net::Ipv4Addr::new(172, 16, 0, 0)), 12),
    (IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, 0)), 16),
    (
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
        8,
    ),
];

impl Settings {
    /// The defaults for a mesh of `trust_domain`: the image of this version, UID 1337, the CA
    /// at `https://picket-ca.picket.svc:7443`, audience `picket-ca`, the private address
    /// ranges meshed, other destinations passed, no extra exclusions.
    pub fn new(trust_domain: picket_ca::TrustDomain) -> Self {
        Self {
            image: format!("picket/picket-sidecar:{VERSION}"),
            init_image: format!("picket/picket-init:{VERSION}"),
            image_pull_policy: "IfNotPresent".to_owned(),
            proxy_uid: 1337,
            ca_url: format!("https://picket-ca.picket.svc:{CA_PORT}"),
            trust_domain,
            token_audience: picket_ca::tokenreview::DEFAULT_AUDIENCE.to_owned(),
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            meshed_cidrs: PRIVATE_NETWORKS
                .iter()
                .filter_map(|&(address, prefix)| Cidr::new(address, prefix).ok())
                .collect(),
            egress_allowed: true,
            block_metadata: true,
            proxy_cpu_request: "10m".to_owned(),
            proxy_memory_request: "32Mi".to_owned(),
            permissive: false,
            rewrite_probes: true,
            scrape_annotations: true,
            controller: None,
            unmeshed_plaintext: false,
        }
    }
}

/// Why a manifest could not be injected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// The input is not YAML (or JSON); the message says where.
    #[error("{0}")]
    Yaml(String),
    /// An opt-out annotation holds something other than ports or CIDRs.
    #[error("{workload}: annotation {annotation}: {reason}")]
    Annotation {
        /// The workload, `Kind namespace/name`.
        workload: String,
        /// The annotation.
        annotation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The pod already has a container or volume with a name Picket uses, but was not
    /// injected by Picket.
    #[error("{workload}: it already has a {what} named {name:?}, which Picket reserves")]
    Conflict {
        /// The workload.
        workload: String,
        /// `container` or `volume`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A field Picket must change has the wrong shape (say, `volumes` is not a list).
    #[error("{workload}: {reason}")]
    Malformed {
        /// The workload.
        workload: String,
        /// What is wrong.
        reason: String,
    },
    /// The result could not be written as YAML.
    #[error("cannot write YAML: {0}")]
    Print(String),
}

/// What happened to one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added (or replaced).
    Injected,
    /// The sidecar was removed.
    Uninjected,
    /// Nothing to remove: the pod was not injected.
    NotInjected,
    /// The pod was left without a sidecar, for this reason.
    Skipped(String),
}

/// One workload's outcome, for the command line to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind namespace/name`.
    pub workload: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Adds the sidecar to every workload in `object` (a workload, or a `List` of them); other
/// kinds are left as they are. Injecting an injected workload replaces its sidecar, so the
/// result is the same as injecting once.
pub fn inject(object: &mut Value, settings: &Settings) -> Result<Vec<Report>, InjectError> {
    report_each_pod(object, |workload, template| {
        inject_pod(workload, template, settings)
    })
}

/// Removes what [`inject`] added from every workload in `object`.
pub fn uninject(object: &mut Value) -> Result<Vec<Report>, InjectError> {
    report_each_pod(object, |workload, template| {
        Ok(if remove_sidecar(workload, template)? {
            Outcome::Uninjected
        } else {
            Outcome::NotInjected
        })
    })
}

/// Runs `change` on every pod template in `object`; one report per workload.
fn report_each_pod(
    object: &mut Value,
    mut change: impl FnMut(&str, &mut Map<String, Value>) -> Result<Outcome, InjectError>,
) -> Result<Vec<Report>, InjectError> {
    let mut reports = Vec::new();
    for_each_pod(object, &mut |workload, template| {
        let outcome = change(workload, template)?;
        reports.push(Report {
            workload: workload.to_owned(),
            outcome,
        });
        Ok(())
    })?;
    Ok(reports)
}

/// Reads a stream of YAML (or JSON) documents. Empty documents are dropped.
///
/// The YAML is read as `kubectl` reads it (YAML 1.1 booleans and `0644`-style octal numbers),
/// so a manifest means the same before and after injection.
pub fn parse_manifests(source_name: &str, text: &str) -> Result<Vec<Value>, InjectError> {
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.with_snippet = false;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("{source_name}:{}:{}", l.line(), l.column()))
                .unwrap_or_else(|| source_name.to_owned());
            InjectError::Yaml(format!("{at}: {}", picket_common::yaml::error_message(&e)))
        })?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// Writes `documents` as one YAML stream, `---` before each. Strings that another YAML
/// reader could take for a number, boolean or null are quoted.
pub fn print_manifests(documents: &[Value]) -> Result<String, InjectError> {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        out.push_str(&print_yaml(document)?);
    }
    Ok(out)
}

fn print_yaml(value: &Value) -> Result<String, InjectError> {
    let text = serde_saphyr::to_string(value).map_err(|e| InjectError::Print(e.to_string()))?;
    Ok(if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    })
}

/// What [`for_each_pod`] calls with a workload's name and pod template.
type PodVisitor<'a> = dyn FnMut(&str, &mut Map<String, Value>) -> Result<(), InjectError> + 'a;

/// Calls `f` with the pod template (the object holding `metadata` and `spec`) of every
/// workload in `object`.
fn for_each_pod(object: &mut Value, f: &mut PodVisitor<'_>) -> Result<(), InjectError> {
    let Some(map) = object.as_object_mut() else {
        return Ok(());
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let path: &[&str] = match (api_version, kind) {
        ("v1", "List") => {
            if let Some(items) = map.get_mut("items").and_then(Value::as_array_mut) {
                for item in items {
                    for_each_pod(item, f)?;
                }
            }
            return Ok(());
        }
        ("v1", "Pod") => &[],
        (
            "apps/v1" | "apps/v1beta1" | "apps/v1beta2" | "extensions/v1beta1",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet",
        )
        | ("batch/v1", "Job") => &["spec", "template"],
        ("batch/v1" | "batch/v1beta1", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let workload = workload_name(kind, map);
    let mut template = map;
    for key in path {
        template = template
            .get_mut(*key)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| InjectError::Malformed {
                workload: workload.clone(),
                reason: format!("no pod template at {}", path.join(".")),
            })?;
    }
    f(&workload, template)
}

fn workload_name(kind: &str, object: &Map<String, Value>) -> String {
    let metadata = object.get("metadata");
    let field = |name: &str| {
        metadata
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let name = match (field("name"), field("generateName")) {
        ("", "") => "<unnamed>".to_owned(),
        ("", prefix) => format!("{prefix}*"),
        (name, _) => name.to_owned(),
    };
    match field("namespace") {
        "" => format!("{kind} {name}"),
        namespace => format!("{kind} {namespace}/{name}"),
    }
}

fn inject_pod(
    workload: &str,
    template: &mut Map<String, Value>,
    settings: &Settings,
) -> Result<Outcome, InjectError> {
    remove_sidecar(workload, template)?;
    if let Some(reason) = skip_reason(template) {
        return Ok(Outcome::Skipped(reason));
    }
    refuse_reserved_names(workload, template)?;
    let annotations = annotations(template);
    let annotation = |key: &'static str| annotations.and_then(|a| a.get(key)?.as_str());
    let mut exclusions = exclusions(workload, settings, annotation)?;
    let mode = inbound_mode(workload, settings, annotation)?;
    let rewrite = settings.rewrite_probes && rewrite_probes_wanted(workload, annotation)?;
    let scrape = settings.scrape_annotations
        && !annotations.is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/")));

    let rewritten = if rewrite {
        rewrite_probes(workload, template, &exclusions.inbound)?
    } else {
        RewrittenProbes::default()
    };
    if !rewritten.health.is_empty() {
        exclusions.inbound.push(HEALTH_PORT);
    }
    let config = print_yaml(&sidecar_config(
        settings,
        template,
        &mode,
        &rewritten.health,
    ))?;
    annotate(workload, template, &config, &rewritten, scrape)?;

    let spec = object_field(workload, template, "spec")?;
    let init = array_field(workload, spec, "initContainers")?;
    init.insert(0, proxy_container(settings, !rewritten.health.is_empty()));
    init.insert(0, init_container(settings, &exclusions));
    array_field(workload, spec, "volumes")?.extend(volumes(settings));
    Ok(Outcome::Injected)
}

/// Refuses a pod that already has a container or volume of a name injection adds.
fn refuse_reserved_names(workload: &str, template: &Map<String, Value>) -> Result<(), InjectError> {
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed(workload, "the pod has no spec"))?;
    for (field, reserved, what) in [
        ("initContainers", &RESERVED_CONTAINERS[..], "container"),
        ("containers", &RESERVED_CONTAINERS[..], "container"),
        ("volumes", &RESERVED_VOLUMES[..], "volume"),
    ] {
        for name in named_items(workload, spec, field)? {
            if reserved.contains(&name.as_str()) {
                return Err(InjectError::Conflict {
                    workload: workload.to_owned(),
                    what,
                    name,
                });
            }
        }
    }
    Ok(())
}

/// The ports and networks that bypass the sidecar: the settings' and the pod's annotations'
/// (the admin port always).
fn exclusions<'a>(
    workload: &str,
    settings: &Settings,
    annotation: impl Fn(&'static str) -> Option<&'a str> + Copy,
) -> Result<Exclusions, InjectError> {
    let mut inbound = vec![ADMIN_PORT];
    inbound.extend(&settings.exclude_inbound_ports);
    inbound.extend(ports(
        workload,
        EXCLUDE_INBOUND_PORTS_ANNOTATION,
        annotation,
    )?);
    let mut outbound = settings.exclude_outbound_ports.clone();
    outbound.extend(ports(
        workload,
        EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
        annotation,
    )?);
    let mut cidrs = settings.exclude_outbound_cidrs.clone();
    cidrs.extend(outbound_cidrs(workload, annotation)?);
    Ok(Exclusions {
        inbound: dedup(inbound),
        outbound: dedup(outbound),
        cidrs: dedup(cidrs),
    })
}

/// The pod's `picket.dev/rewrite-probes` annotation: absent or "true" is yes.
fn rewrite_probes_wanted<'a>(
    workload: &str,
    annotation: impl Fn(&'static str) -> Option<&'a str>,
) -> Result<bool, InjectError> {
    match annotation(REWRITE_PROBES_ANNOTATION) {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(InjectError::Annotation {
            workload: workload.to_owned(),
            annotation: REWRITE_PROBES_ANNOTATION,
            reason: format!("{other:?} is not \"true\" or \"false\""),
        }),
    }
}

/// Adds injection's annotations: the status, the sidecar config, the original probes, and the
/// scrape annotations (with the list of them, so that uninject takes exactly those out).
fn annotate(
    workload: &str,
    template: &mut Map<String, Value>,
    config: &str,
    rewritten: &RewrittenProbes,
    scrape: bool,
) -> Result<(), InjectError> {
    let metadata = object_field(workload, template, "metadata")?;
    let annotations = object_field(workload, metadata, "annotations")?;
    annotations.insert(STATUS_ANNOTATION.to_owned(), json!(VERSION));
    annotations.insert(CONFIG_ANNOTATION.to_owned(), json!(config));
    if !rewritten.originals.is_empty() {
        let originals = serde_json::to_string(&rewritten.originals)
            .map_err(|e| malformed(workload, format!("cannot record the original probes: {e}")))?;
        annotations.insert(ORIGINAL_PROBES_ANNOTATION.to_owned(), json!(originals));
    }
    if scrape {
        for (key, value) in SCRAPE_ANNOTATIONS {
            annotations.insert(key.to_owned(), json!(value));
        }
        let keys: Vec<&str> = SCRAPE_ANNOTATIONS.iter().map(|(k, _)| *k).collect();
        annotations.insert(
            ADDED_ANNOTATIONS_ANNOTATION.to_owned(),
            json!(keys.join(",")),
        );
    }
    Ok(())
}

/// Removes what injection added; says whether there was anything to remove.
fn remove_sidecar(workload: &str, template: &mut Map<String, Value>) -> Result<bool, InjectError> {
    let injected = annotations(template).is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    if !injected {
        return Ok(false);
    }
    let originals = match annotations(template).and_then(|a| a.get(ORIGINAL_PROBES_ANNOTATION)) {
        None => None,
        Some(text) => {
            let parsed = text
                .as_str()
                .and_then(|t| serde_json::from_str::<Map<String, Value>>(t).ok())
                .ok_or_else(|| {
                    malformed(
                        workload,
                        format!(
                            "annotation {ORIGINAL_PROBES_ANNOTATION} is not the JSON Picket wrote"
                        ),
                    )
                })?;
            Some(parsed)
        }
    };
    let added: Vec<String> = annotations(template)
        .and_then(|a| a.get(ADDED_ANNOTATIONS_ANNOTATION)?.as_str())
        .map(|v| split_list(v).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(spec) = template.get_mut("spec").and_then(Value::as_object_mut) {
        remove_named(workload, spec, "initContainers", &RESERVED_CONTAINERS)?;
        remove_named(workload, spec, "volumes", &RESERVED_VOLUMES)?;
        if let Some(originals) = originals {
            restore_probes(workload, spec, &originals)?;
        }
    }
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = metadata
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            for key in ADDED_ANNOTATIONS {
                annotations.remove(key);
            }
            for key in &added {
                annotations.remove(key);
            }
            if annotations.is_empty() {
                metadata.remove("annotations");
            }
        }
        if metadata.is_empty() {
            template.remove("metadata");
        }
    }
    Ok(true)
}

fn skip_reason(template: &Map<String, Value>) -> Option<String> {
    let metadata = template.get("metadata");
    for place in ["annotations", "labels"] {
        let opted_out = metadata
            .and_then(|m| m.get(place))
            .and_then(|m| m.get(INJECT_ANNOTATION))
            .is_some_and(|v| v.as_str() == Some("false") || v.as_bool() == Some(false));
        if opted_out {
            let singular = place.trim_end_matches('s');
            return Some(format!(
                "opted out ({singular} {INJECT_ANNOTATION}: \"false\")"
            ));
        }
    }
    let host_network = template
        .get("spec")
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    host_network.then(|| {
        "uses the host network (the iptables step would rewrite the node's rules)".to_owned()
    })
}

/// The pod's inbound mode: its annotations, else the injector's setting.
fn inbound_mode<'a>(
    workload: &str,
    settings: &Settings,
    annotation: impl Fn(&'static str) -> Option<&'a str> + Copy,
) -> Result<PodMode, InjectError> {
    let permissive = match annotation(INBOUND_MODE_ANNOTATION) {
        None => settings.permissive,
        Some("strict") => false,
        Some("permissive") => true,
        Some(other) => {
            return Err(InjectError::Annotation {
                workload: workload.to_owned(),
                annotation: INBOUND_MODE_ANNOTATION,
                reason: format!("{other:?} is not strict or permissive"),
            });
        }
    };
    let ports = dedup(ports(workload, PERMISSIVE_PORTS_ANNOTATION, annotation)?);
    Ok(if permissive {
        PodMode::Permissive
    } else if ports.is_empty() {
        PodMode::Strict
    } else {
        PodMode::PermissivePorts(ports)
    })
}

/// A pod's inbound mode.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodMode {
    Strict,
    Permissive,
    PermissivePorts(Vec<u16>),
}

/// The probes [`rewrite_probes`] changed.
#[derive(Debug, Default)]
struct RewrittenProbes {
    /// container -> probe kind -> the original probe.
    originals: Map<String, Value>,
    /// The health listener's probe entries (sidecar configuration).
    health: Vec<Value>,
}

/// Rewrites the app containers' `httpGet`, `tcpSocket` and `grpc` probes on intercepted
/// ports to `GET /app-health/<container>/<kind>` on the health port, keeping every other
/// field (periods, thresholds, timeout). Probes naming a `host` (they do not probe the pod),
/// `exec` probes and probes on excluded ports stay as they are.
fn rewrite_probes(
    workload: &str,
    template: &mut Map<String, Value>,
    excluded: &[u16],
) -> Result<RewrittenProbes, InjectError> {
    let mut out = RewrittenProbes::default();
    let Some(containers) = template
        .get_mut("spec")
        .and_then(|s| s.get_mut("containers"))
        .and_then(Value::as_array_mut)
    else {
        return Ok(out);
    };
    for container in containers.iter_mut() {
        let Some(container) = container.as_object_mut() else {
            continue;
        };
        let name = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let declared = container.get("ports").cloned().unwrap_or(Value::Null);
        for (kind, short) in PROBE_KINDS {
            let Some(probe) = container.get(kind).and_then(Value::as_object) else {
                continue;
            };
            let place = format!("container {name:?} {kind}");
            let Some(check) = probe_check(workload, &place, probe, &declared)? else {
                continue;
            };
            let port = check.get("port").and_then(Value::as_u64).unwrap_or(0);
            if excluded.iter().any(|p| u64::from(*p) == port) {
                continue;
            }
            let probe_name = format!("{name}/{short}");
            let timeout = probe
                .get("timeoutSeconds")
                .and_then(Value::as_u64)
                .filter(|t| *t > 0)
                .unwrap_or(1);
            let mut entry = json!({"name": probe_name, "timeout": format!("{timeout}s")});
            if let (Some(e), Some(c)) = (entry.as_object_mut(), check["check"].as_object()) {
                e.extend(c.clone());
            }
            out.health.push(entry);
            let original = Value::Object(probe.clone());
            let mut rewritten = probe.clone();
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                rewritten.remove(handler);
            }
            rewritten.insert(
                "httpGet".to_owned(),
                json!({
                    "path": format!("{HEALTH_PATH_PREFIX}{probe_name}"),
                    "port": HEALTH_PORT,
                    "scheme": "HTTP",
                }),
            );
            container.insert(kind.to_owned(), Value::Object(rewritten));
            if let Value::Object(by_kind) = out
                .originals
                .entry(name.clone())
                .or_insert_with(|| json!({}))
            {
                by_kind.insert(kind.to_owned(), original);
            }
        }
    }
    Ok(out)
}

/// What the health listener must check for one probe, as `{"port": N, "check": {...}}`
/// (the check in sidecar-configuration form), or `None` when the probe is not rewritten.
fn probe_check(
    workload: &str,
    place: &str,
    probe: &Map<String, Value>,
    declared_ports: &Value,
) -> Result<Option<Value>, InjectError> {
    let bad = |reason: String| malformed(workload, format!("{place}: {reason}"));
    if let Some(http) = probe.get("httpGet") {
        if names_a_host(http) {
            return Ok(None);
        }
        let port = resolve_port(http.get("port"), declared_ports).map_err(bad)?;
        let scheme = http.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if scheme != "HTTP" && scheme != "HTTPS" {
            return Err(bad(format!(
                "httpGet.scheme {scheme:?} is not HTTP or HTTPS"
            )));
        }
        let path = http.get("path").and_then(Value::as_str).unwrap_or("/");
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        let headers: Vec<Value> = http
            .get("httpHeaders")
            .and_then(Value::as_array)
            .map(|hs| {
                hs.iter()
                    .map(|h| json!({"name": h.get("name").cloned().unwrap_or(json!("")), "value": h.get("value").cloned().unwrap_or(json!(""))}))
                    .collect()
            })
            .unwrap_or_default();
        let mut check = json!({"port": port, "path": path, "scheme": scheme});
        if !headers.is_empty() {
            check["headers"] = json!(headers);
        }
        return Ok(Some(json!({"port": port, "check": {"http": check}})));
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        if names_a_host(tcp) {
            return Ok(None);
        }
        let port = resolve_port(tcp.get("port"), declared_ports).map_err(bad)?;
        return Ok(Some(
            json!({"port": port, "check": {"tcp": {"port": port}}}),
        ));
    }
    if let Some(grpc) = probe.get("grpc") {
        let port = resolve_port(grpc.get("port"), declared_ports).map_err(bad)?;
        let service = grpc.get("service").and_then(Value::as_str).unwrap_or("");
        return Ok(Some(
            json!({"port": port, "check": {"grpc": {"port": port, "service": service}}}),
        ));
    }
    Ok(None)
}

/// Whether a probe's `httpGet` or `tcpSocket` names a host: the kubelet then checks another
/// machine, which the sidecar cannot stand in for, so the probe is left as written.
fn names_a_host(action: &Value) -> bool {
    action
        .get("host")
        .and_then(Value::as_str)
        .is_some_and(|h| !h.is_empty())
}

/// A probe's port: a number, or the name of one of the container's ports.
fn resolve_port(port: Option<&Value>, declared: &Value) -> Result<u16, String> {
    match port {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not a port number (1-65535)")),
        Some(Value::String(name)) => {
            if let Ok(n) = name.parse::<u16>() {
                return if n > 0 {
                    Ok(n)
                } else {
                    Err("port 0 is not a port".into())
                };
            }
            declared
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort")?.as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("port {name:?} is not one of the container's named ports"))
        }
        _ => Err("the probe has no port".into()),
    }
}

/// Puts the probes recorded in [`ORIGINAL_PROBES_ANNOTATION`] back.
fn restore_probes(
    workload: &str,
    spec: &mut Map<String, Value>,
    originals: &Map<String, Value>,
) -> Result<(), InjectError> {
    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| malformed(workload, "spec.containers is not a list"))?;
    for (name, by_kind) in originals {
        let container = containers
            .iter_mut()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                malformed(
                    workload,
                    format!("{ORIGINAL_PROBES_ANNOTATION} names container {name:?}, which the pod does not have"),
                )
            })?;
        for (kind, probe) in by_kind.as_object().into_iter().flatten() {
            container.insert(kind.clone(), probe.clone());
        }
    }
    Ok(())
}

/// The ports and CIDRs that bypass the sidecar in one pod.
struct Exclusions {
    inbound: Vec<u16>,
    outbound: Vec<u16>,
    cidrs: Vec<Cidr>,
}

/// The `picket iptables` init container: redirects the pod's TCP through the sidecar,
/// exempting the sidecar's own UID and the excluded ports and networks.
fn init_container(settings: &Settings, exclusions: &Exclusions) -> Value {
    let mut args = vec![
        "iptables".to_owned(),
        "--proxy-uid".to_owned(),
        settings.proxy_uid.to_string(),
        "--inbound-port".to_owned(),
        INBOUND_PORT.to_string(),
        "--outbound-port".to_owned(),
        OUTBOUND_PORT.to_string(),
    ];
    let mut list = |flag: &str, items: Vec<String>| {
        if !items.is_empty() {
            args.push(flag.to_owned());
            args.push(items.join(","));
        }
    };
    list(
        "--exclude-inbound-ports",
        exclusions.inbound.iter().map(u16::to_string).collect(),
    );
    list(
        "--exclude-outbound-ports",
        exclusions.outbound.iter().map(u16::to_string).collect(),
    );
    list(
        "--exclude-outbound-cidrs",
        exclusions.cidrs.iter().map(Cidr::to_string).collect(),
    );
    json!({
        "name": INIT_CONTAINER,
        "image": settings.init_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": args,
        // Root with exactly the two capabilities iptables needs; it exits before the app
        // starts. (A pod-level runAsNonRoot is overridden for this container only.)
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    })
}

/// The allocator setting every sidecar runs with: mimalloc gives freed pages back to the
/// system at the first free after its purge delay (10 ms) has passed, instead of pushing that
/// moment 1 ms further with every page freed meanwhile. Without it, the HTTP buffers a burst
/// of parking connections gives up stay resident for seconds, until a later free finds the
/// pushed-back moment passed (ARCHITECTURE.md, "Runtime and memory"). mimalloc reads it from
/// the environment before `main`; the program sets no allocator option itself (that would
/// take `unsafe`).
pub const ALLOCATOR_ENV: (&str, &str) = ("MIMALLOC_PURGE_EXTEND_DELAY", "0");

/// The sidecar, as a native sidecar container.
fn proxy_container(settings: &Settings, health: bool) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        })
    };
    let from_field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let mount = |name: &str, path: &str| json!({"name": name, "mountPath": path, "readOnly": true});
    let mut ports = vec![
        json!({"name": "picket-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"}),
        json!({"name": "picket-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}),
    ];
    if health {
        ports.push(
            json!({"name": "picket-health", "containerPort": HEALTH_PORT, "protocol": "TCP"}),
        );
    }
    json!({
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "args": ["proxy", "--config", format!("{CONFIG_DIR}/{CONFIG_FILE}"), "--log-format", "json"],
        "env": [
            from_field("PICKET_NAMESPACE", "metadata.namespace"),
            from_field("PICKET_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            json!({"name": ALLOCATOR_ENV.0, "value": ALLOCATOR_ENV.1}),
        ],
        "ports": ports,
        // Up to two minutes to obtain the first certificate before the kubelet restarts it.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_uid,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {
            "requests": {
                "cpu": settings.proxy_cpu_request,
                "memory": settings.proxy_memory_request,
            },
        },
        "volumeMounts": [
            mount(CONFIG_VOLUME, CONFIG_DIR),
            mount(TOKEN_VOLUME, TOKEN_DIR),
            mount(TRUST_BUNDLE_VOLUME, TRUST_DIR),
            mount(POLICY_VOLUME, POLICY_DIR),
        ],
    })
}

fn volumes(settings: &Settings) -> [Value; 4] {
    [
        json!({
            "name": CONFIG_VOLUME,
            "downwardAPI": {"items": [{
                "path": CONFIG_FILE,
                "fieldRef": {"fieldPath": format!("metadata.annotations['{CONFIG_ANNOTATION}']")},
            }]},
        }),
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": settings.token_audience,
                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                "path": TOKEN_FILE,
            }}]},
        }),
        json!({"name": TRUST_BUNDLE_VOLUME, "configMap": {"name": TRUST_BUNDLE_CONFIGMAP}}),
        json!({"name": POLICY_VOLUME, "configMap": {"name": POLICY_CONFIGMAP}}),
    ]
}

/// The sidecar configuration of an injected pod: transparent in both directions, the policy
/// from the `picket-policy` ConfigMap, the pod's labels for policy selectors. Identity
/// (namespace and service account) is not in it: the sidecar takes it from
/// `PICKET_NAMESPACE` and `PICKET_SERVICE_ACCOUNT`, and the CA grants it from the
/// service-account token.
fn sidecar_config(
    settings: &Settings,
    template: &Map<String, Value>,
    mode: &PodMode,
    health_probes: &[Value],
) -> Value {
    let mut inbound = json!({"listen": format!("0.0.0.0:{INBOUND_PORT}"), "transparent": true});
    match mode {
        PodMode::Strict => {}
        PodMode::Permissive => inbound["mode"] = json!("permissive"),
        PodMode::PermissivePorts(ports) => inbound["permissive_ports"] = json!(ports),
    }
    // Connections made straight to the inbound port (not redirected) go to the first port
    // the pod declares.
    if let Some(port) = first_container_port(template) {
        inbound["app"] = json!(format!("127.0.0.1:{port}"));
    }
    let meshed: Vec<Value> = settings
        .meshed_cidrs
        .iter()
        .map(|cidr| json!({"cidr": cidr.to_string(), "identity": "any"}))
        .collect();
    let mut config = json!({
        "identity": {"trust_domain": settings.trust_domain.as_str()},
        "ca": {
            "url": settings.ca_url,
            "trust_bundle": format!("{TRUST_DIR}/{TRUST_FILE}"),
            "join_token_file": format!("{TOKEN_DIR}/{TOKEN_FILE}"),
        },
        "inbound": inbound,
        "outbound": {
            "listen": format!("127.0.0.1:{OUTBOUND_PORT}"),
            "transparent": true,
            "meshed": meshed,
            "passthrough": if settings.egress_allowed { "allow" } else { "deny" },
        },
        // Kubelet probes and metrics scrapers reach the admin port on the pod's address.
        "admin": {"listen": format!("0.0.0.0:{ADMIN_PORT}")},
        "policy": {"path": format!("{POLICY_DIR}/{POLICY_FILE}")},
    });
    // The sidecar blocks the metadata service unless told otherwise: the key is written only
    // for `alert`, so the default configuration stays as it was.
    if let Some(outbound) = config.get_mut("outbound").and_then(Value::as_object_mut) {
        if !settings.block_metadata {
            outbound.insert("metadata".to_owned(), json!("alert"));
        }
        // Likewise `unmeshed` is written only when it differs from the sidecar's `deny`.
        if settings.unmeshed_plaintext {
            outbound.insert("unmeshed".to_owned(), json!("plaintext"));
        }
    }
    // Cluster mode: transparent destinations come from the controller (balanced over the
    // endpoints it names, each pinned to its pod's identity); `meshed` stays the expectation
    // for addresses the controller does not know.
    if let Some(controller) = &settings.controller {
        config["controller"] = json!({
            "address": controller.address,
            "identity": controller.identity.to_uri(),
        });
    }
    if let Some(labels) = template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .filter(|l| l.as_object().is_some_and(|l| !l.is_empty()))
    {
        config["workload"] = json!({"labels": labels});
    }
    if !health_probes.is_empty() {
        config["health"] = json!({
            "listen": format!("0.0.0.0:{HEALTH_PORT}"),
            "probes": health_probes,
        });
    }
    config
}

/// The first TCP `containerPort` of the pod's containers.
fn first_container_port(template: &Map<String, Value>) -> Option<u64> {
    let containers = template.get("spec")?.get("containers")?.as_array()?;
    containers
        .iter()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
        .filter(|p| p.get("protocol").is_none_or(|proto| proto == "TCP"))
        .find_map(|p| p.get("containerPort")?.as_u64())
}

fn annotations(template: &Map<String, Value>) -> Option<&Map<String, Value>> {
    template.get("metadata")?.get("annotations")?.as_object()
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports<'a>(
    workload: &str,
    key: &'static str,
    annotation: impl Fn(&'static str) -> Option<&'a str>,
) -> Result<Vec<u16>, InjectError> {
    let Some(value) = annotation(key) else {
        return Ok(Vec::new());
    };
    split_list(value)
        .map(|port| match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(InjectError::Annotation {
                workload: workload.to_owned(),
                annotation: key,
                reason: format!("{port:?} is not a port number (1-65535)"),
            }),
        })
        .collect()
}

fn outbound_cidrs<'a>(
    workload: &str,
    annotation: impl Fn(&'static str) -> Option<&'a str>,
) -> Result<Vec<Cidr>, InjectError> {
    let Some(value) = annotation(EXCLUDE_OUTBOUND_CIDRS_ANNOTATION) else {
        return Ok(Vec::new());
    };
    split_list(value)
        .map(|cidr| {
            Cidr::parse(cidr).map_err(|e| InjectError::Annotation {
                workload: workload.to_owned(),
                annotation: EXCLUDE_OUTBOUND_CIDRS_ANNOTATION,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn malformed(workload: &str, reason: impl Into<String>) -> InjectError {
    InjectError::Malformed {
        workload: workload.to_owned(),
        reason: reason.into(),
    }
}

/// The `name`s of the items of the list `field` of `spec` (absent = none).
fn named_items(
    workload: &str,
    spec: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, InjectError> {
    match spec.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .filter_map(|i| i.get("name")?.as_str().map(str::to_owned))
            .collect()),
        Some(_) => Err(malformed(workload, format!("spec.{field} is not a list"))),
    }
}

fn object_field<'a>(
    workload: &str,
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, InjectError> {
    let value = map.entry(key).or_insert_with(|| json!({}));
    if value.is_null() {
        *value = json!({});
    }
    value
        .as_object_mut()
        .ok_or_else(|| malformed(workload, format!("{key} is not a mapping")))
}

fn array_field<'a>(
    workload: &str,
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let value = map.entry(key).or_insert_with(|| json!([]));
    if value.is_null() {
        *value = json!([]);
    }
    value
        .as_array_mut()
        .ok_or_else(|| malformed(workload, format!("spec.{key} is not a list")))
}

/// Removes the items of list `field` named in `names`; drops the list if that empties it.
fn remove_named(
    workload: &str,
    spec: &mut Map<String, Value>,
    field: &str,
    names: &[&str],
) -> Result<(), InjectError> {
    let Some(value) = spec.get_mut(field) else {
        return Ok(());
    };
    let items = value
        .as_array_mut()
        .ok_or_else(|| malformed(workload, format!("spec.{field} is not a list")))?;
    items.retain(|item| {
        item.get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| !names.contains(&n))
    });
    if items.is_empty() {
        spec.remove(field);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
