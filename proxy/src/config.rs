//! The sidecar configuration: one YAML file, unknown fields rejected, validated into plain
//! structs that the rest of the proxy receives. Nothing else in the proxy reads files or the
//! environment for settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use picket_ca::SpiffeId;
use picket_common::text::{MAX_TEXT_BYTES, TextError, read_text};
use serde::Deserialize;

pub use crate::peer::PeerIdentity;
use crate::yaml::{self, Spanned, YamlError};

mod sections;

/// The validated sidecar configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// This workload's identity.
    pub identity: SpiffeId,
    /// How to reach the CA.
    pub ca: CaConfig,
    /// Inbound (server) side.
    pub inbound: InboundConfig,
    /// Outbound (client) side.
    pub outbound: OutboundConfig,
    /// Admin listener.
    pub admin: AdminConfig,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// This workload's labels, matched by policy selectors.
    pub labels: BTreeMap<String, String>,
    /// Authorization policy.
    pub policy: PolicyConfig,
    /// How requests are made canonical before policy and forwarding.
    pub http: HttpConfig,
    /// Traces, flow records and lateral-movement detectors.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The health listener that carries rewritten kubelet probes to the app.
    pub health: Option<HealthConfig>,
    /// End-user request authentication (JWT): JWKS fetching, skew, logging.
    pub jwt: crate::jwt::JwtSettings,
    /// The controller to subscribe to for destinations (cluster mode); none: file mode.
    pub controller: Option<crate::discover::controller::ControllerSource>,
}

/// The health listener: kubelet probes rewritten by the injector arrive here, never
/// intercepted, and are carried to the app from inside the pod.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Where the rewritten probes arrive.
    pub listen: SocketAddr,
    /// The app's probes, by name (served at `/app-health/<name>`).
    pub probes: BTreeMap<String, AppProbe>,
}

/// One of the app's probes, as the health listener runs it.
#[derive(Debug, Clone)]
pub struct AppProbe {
    /// What to check.
    pub check: ProbeCheck,
    /// How long the app may take to answer (the probe's `timeoutSeconds`).
    pub timeout: Duration,
}

/// What a probe checks, against the app on loopback.
#[derive(Debug, Clone)]
pub enum ProbeCheck {
    /// An HTTP GET; succeeds with a status from 200 to 399, as the kubelet's.
    Http {
        /// The app's port.
        port: u16,
        /// Path and query.
        path: String,
        /// HTTPS (the certificate is not verified, as the kubelet does not verify it).
        https: bool,
        /// Extra request headers, in order.
        headers: Vec<(String, String)>,
    },
    /// A TCP connect to the app's port.
    Tcp {
        /// The app's port.
        port: u16,
    },
    /// The app's `grpc.health.v1.Health/Check`.
    Grpc {
        /// The app's port.
        port: u16,
        /// The service name asked about (empty: the whole server).
        service: String,
    },
}

/// Which inbound connections may arrive in plaintext (migration from no mesh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundMode {
    /// mTLS only (the default).
    Strict,
    /// Plaintext accepted on every port, told apart from mTLS by its first bytes.
    Permissive,
    /// Plaintext accepted on these destination ports only.
    PermissivePorts(Vec<u16>),
}

impl InboundMode {
    /// Whether plaintext is accepted for connections to `port`.
    pub fn permits_plaintext(&self, port: u16) -> bool {
        match self {
            Self::Strict => false,
            Self::Permissive => true,
            Self::PermissivePorts(ports) => ports.contains(&port),
        }
    }
}

/// Authorization policy settings.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// A policy file or a directory of them; `None` means no policy files (the default
    /// action decides everything).
    pub path: Option<PathBuf>,
    /// Options for loading and evaluating.
    pub load: picket_policy::LoadOptions,
    /// Include policy, rule and reason in 403 bodies (the log always has them).
    pub deny_details: bool,
}

/// Request normalization settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Path rules.
    pub path: picket_policy::normalize::PathOptions,
    /// Accept header names containing `_` (rejected by default: some servers fold `_` into
    /// `-`, which would let a client smuggle a header past policy).
    pub allow_header_underscores: bool,
    /// Headers removed from every request the app receives (mesh identity and routing
    /// headers; [`crate::forward::DEFAULT_STRIP_HEADERS`] by default).
    pub strip_headers: Vec<crate::forward::HeaderPattern>,
    /// What the app receives of `Forwarded`, `X-Forwarded-For` and `X-Real-IP`.
    pub forwarded: crate::forward::ForwardedMode,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            path: picket_policy::normalize::PathOptions::default(),
            allow_header_underscores: false,
            strip_headers: crate::forward::DEFAULT_STRIP_HEADERS
                .iter()
                .filter_map(|p| crate::forward::HeaderPattern::parse(p).ok())
                .collect(),
            forwarded: crate::forward::ForwardedMode::Drop,
        }
    }
}

/// How the sidecar reaches the CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Base URLs, `https://host:port`: `ca.url` first, then `ca.fallback_urls`. Calls go to
    /// the one that answered last and move to the next when it is unreachable or unavailable.
    pub urls: Vec<String>,
    /// PEM file with the roots that sign the CA's serving certificate (the trust bundle).
    pub trust_bundle: PathBuf,
    /// File holding the join token for the first issuance.
    pub join_token_file: PathBuf,
}

/// Inbound side.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where peers' mTLS connections arrive.
    pub listen: SocketAddr,
    /// The local application, plaintext, for connections that were not redirected. Optional in
    /// transparent mode, where such connections are then refused.
    pub app: Option<SocketAddr>,
    /// Redirected connections (iptables) go to `127.0.0.1:<original port>` (`[::1]` for IPv6).
    pub transparent: bool,
    /// Strict (mTLS only) or permissive (plaintext also accepted) for migration.
    pub mode: InboundMode,
}

/// Outbound side.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The shared outbound listener: HTTP requests routed by `Host` to an upstream's name.
    pub listen: SocketAddr,
    /// Explicit upstreams.
    pub upstreams: Vec<Upstream>,
    /// Take the destination of redirected connections from `SO_ORIGINAL_DST`.
    pub transparent: bool,
    /// Transparent destinations carried over mTLS.
    pub meshed: Vec<MeshedDestination>,
    /// Whether other transparent destinations pass through as plain TCP (`allow`) or are
    /// refused (`deny`, the egress policy).
    pub passthrough: bool,
    /// Transparent destination ports carrying opaque TCP: no protocol detection.
    pub opaque_ports: Vec<u16>,
    /// Whether passthrough connections to a cloud metadata address
    /// (`telemetry.detectors.metadata_addresses`) are refused (`block`, the default) or only
    /// alerted (`alert`).
    pub block_metadata: bool,
    /// Destinations listed in the file (the static discovery source): each address with its
    /// endpoints and the identity each must present. Requests for a listed address are
    /// balanced over its endpoints.
    pub destinations: Vec<(SocketAddr, crate::discover::Destination)>,
    /// What traffic for an endpoint without a sidecar (no identity) does.
    pub unmeshed: Unmeshed,
    /// How requests are balanced over a destination's endpoints.
    pub balancer: BalancerSettings,
}

/// Traffic for an unmeshed endpoint (one whose pod runs no sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmeshed {
    /// Refused: a connection is closed and an HTTP request answered 503 (the default).
    Deny,
    /// Carried without TLS, as plain TCP to the endpoint.
    Plaintext,
}

/// Balancing over a discovered destination's endpoints (`outbound.balancer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalancerSettings {
    /// How long a connection waits for the discovery source's first answer about its
    /// destination before it goes on as if the destination were unknown.
    pub pending_wait: Duration,
    /// Consecutive failures (connect, TLS, connection broken) that set an endpoint aside.
    pub failures: u32,
    /// The first backoff ceiling of an endpoint set aside; it doubles with each failed probe.
    pub backoff: Duration,
    /// The largest backoff ceiling.
    pub backoff_max: Duration,
    /// Time constant τ of the peak-EWMA latency estimate: an old peak weighs `e⁻¹` after τ,
    /// and the estimate of an endpoint without samples fades as `e^(−t/τ)`.
    pub decay: Duration,
}

impl Default for BalancerSettings {
    fn default() -> Self {
        Self {
            pending_wait: Duration::from_millis(200),
            failures: 5,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            // Linkerd's default.
            decay: Duration::from_secs(10),
        }
    }
}

/// A set of transparent destinations that are inside the mesh.
#[derive(Debug, Clone)]
pub struct MeshedDestination {
    /// Network (parsed like a policy `ipBlocks` entry).
    pub network: picket_common::Cidr,
    /// Ports; empty means every port.
    pub ports: Vec<u16>,
    /// What the destination's sidecar must present.
    pub identity: PeerIdentity,
}

impl MeshedDestination {
    /// Whether `addr` falls in this set.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        (self.ports.is_empty() || self.ports.contains(&addr.port()))
            && self.network.contains(addr.ip().to_canonical())
    }
}

/// One explicit upstream: a local plaintext address forwarded over mTLS to a remote sidecar.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name, also matched against the `Host` header on the shared outbound listener.
    pub name: String,
    /// Local plaintext listener for this upstream, if any.
    pub listen: Option<SocketAddr>,
    /// The remote sidecar's inbound address.
    pub address: SocketAddr,
    /// The identity the remote sidecar must present.
    pub identity: PeerIdentity,
    /// How traffic is carried.
    pub protocol: Protocol,
}

/// How an upstream's traffic is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2 from the app, HTTP/2 between the sidecars.
    Http,
    /// Opaque bytes.
    Tcp,
}

/// Admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of `/live`, `/ready`, `/metrics`, `/identity`.
    pub listen: SocketAddr,
}

/// Timeouts, all with safe defaults.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TLS handshake, and the HTTP/1 request head, on every listener.
    pub handshake: Duration,
    /// Connecting to a peer sidecar or the app.
    pub connect: Duration,
    /// Whole request, from the request head to the response head.
    pub request: Duration,
    /// An idle connection (no bytes either way) is closed after this.
    pub idle: Duration,
    /// An app's HTTP/1 keep-alive connection (plain TCP) that has been idle this long gives up
    /// its HTTP buffers until its next request (`net::park`).
    pub park: Duration,
    /// An app connection whose reader has not taken response data handed to it for this long
    /// (a full TCP send buffer, or an HTTP/2 window left at zero) is closed.
    pub stall: Duration,
    /// How long in-flight work may finish after SIGTERM.
    pub drain: Duration,
    /// How long a transparent outbound connection may stay silent before it is treated as
    /// opaque TCP (protocol detection).
    pub detect: Duration,
}

/// Limits, all with safe defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections per listener; more are refused.
    pub max_connections: usize,
    /// Requests in flight per direction; more are shed with 503.
    pub max_requests: usize,
    /// Largest request head (HTTP/1) or header list (HTTP/2) in bytes.
    pub max_header_bytes: usize,
}

impl Limits {
    /// [`Limits::max_header_bytes`] as the HTTP/2 header list limit.
    pub fn header_list_bytes(&self) -> u32 {
        u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX)
    }
}

impl Config {
    /// The limits every listener of this sidecar applies (data path and admin alike): the
    /// connection limit, `timeouts.handshake` for the TLS handshake and the HTTP/1 request
    /// head, and the header size limit.
    pub fn listener_settings(&self) -> picket_common::server::ListenerSettings {
        picket_common::server::ListenerSettings {
            max_connections: self.limits.max_connections,
            header_timeout: self.timeouts.handshake,
            max_header_bytes: self.limits.max_header_bytes,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why: I/O, larger than 1 MiB (as a policy file), or not UTF-8 (with the byte offset).
        source: TextError,
    },
    /// The YAML is malformed or a value is invalid; the error says where.
    #[error("{0}")]
    Invalid(#[from] YamlError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    identity: Spanned<RawIdentity>,
    ca: RawCa,
    inbound: Spanned<RawInbound>,
    #[serde(default)]
    outbound: RawOutbound,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    workload: RawWorkload,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    jwt: RawJwt,
    #[serde(default)]
    controller: Option<RawController>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    address: Spanned<String>,
    identity: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    trust_roots: Option<PathBuf>,
    fetch_timeout: Option<Spanned<String>>,
    refresh_interval: Option<Spanned<String>>,
    refetch_min_interval: Option<Spanned<String>>,
    clock_skew: Option<Spanned<String>>,
    log_token: Option<Spanned<String>>,
    max_principal_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    listen: Option<Spanned<String>>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    name: Spanned<String>,
    http: Option<RawHttpProbe>,
    tcp: Option<RawPortProbe>,
    grpc: Option<RawGrpcProbe>,
    timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpProbe {
    port: Spanned<u16>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    scheme: Option<Spanned<String>>,
    #[serde(default)]
    headers: Vec<RawProbeHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbeHeader {
    name: Spanned<String>,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortProbe {
    port: Spanned<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpcProbe {
    port: Spanned<u16>,
    #[serde(default)]
    service: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    path: Option<PathBuf>,
    default_action: Option<Spanned<String>>,
    root_namespace: Option<Spanned<String>>,
    #[serde(default)]
    opaque_ports: Vec<u16>,
    deny_details: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    encoded_slashes: Option<Spanned<String>>,
    header_underscores: Option<Spanned<String>>,
    strip_headers: Option<Vec<Spanned<String>>>,
    forwarded: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    trust_domain: Spanned<String>,
    namespace: Option<Spanned<String>>,
    service_account: Option<Spanned<String>>,
}

/// Identity parts given outside the file (flags or the environment, e.g. from the Kubernetes
/// downward API). A file value that disagrees with one is an error.
#[derive(Debug, Clone, Default)]
pub struct IdentityOverride {
    /// The workload's namespace.
    pub namespace: Option<String>,
    /// The workload's service account.
    pub service_account: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    url: Spanned<String>,
    #[serde(default)]
    fallback_urls: Vec<Spanned<String>>,
    trust_bundle: PathBuf,
    join_token_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    app: Option<Spanned<String>>,
    #[serde(default)]
    transparent: bool,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    permissive_ports: Vec<Spanned<u16>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    transparent: bool,
    #[serde(default)]
    meshed: Vec<RawMeshed>,
    passthrough: Option<Spanned<String>>,
    #[serde(default)]
    opaque_ports: Vec<u16>,
    #[serde(default)]
    metadata: Option<Spanned<String>>,
    #[serde(default)]
    destinations: Vec<RawDestination>,
    #[serde(default)]
    unmeshed: Option<Spanned<String>>,
    #[serde(default)]
    balancer: RawBalancer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    address: Spanned<String>,
    #[serde(default)]
    service: Option<Spanned<String>>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: Spanned<String>,
    #[serde(default)]
    identity: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBalancer {
    pending_wait: Option<Spanned<String>>,
    failures: Option<Spanned<usize>>,
    backoff: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    decay: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshed {
    cidr: Spanned<String>,
    #[serde(default)]
    ports: Vec<u16>,
    identity: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: Spanned<String>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    address: Spanned<String>,
    identity: Spanned<String>,
    #[serde(default = "default_protocol")]
    protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Http
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    handshake: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    request: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    park: Option<Spanned<String>>,
    stall: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    detect: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<Spanned<usize>>,
    max_requests: Option<Spanned<usize>>,
    max_header_bytes: Option<Spanned<usize>>,
}

/// Default inbound listener.
pub const DEFAULT_INBOUND: &str = "0.0.0.0:7143";
/// Default shared outbound listener.
pub const DEFAULT_OUTBOUND: &str = "127.0.0.1:7140";
/// Default admin listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:7191";
/// Default health listener (rewritten kubelet probes).
pub const DEFAULT_HEALTH: &str = "0.0.0.0:7192";
/// A probe's timeout when none is given (the kubelet's default `timeoutSeconds`).
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path, identity: &IdentityOverride) -> Result<Self, ConfigError> {
        let text = read_text(path, MAX_TEXT_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse_with(
            &path.display().to_string(),
            &text,
            identity,
        )?)
    }

    /// Parses and validates configuration text; `source_name` is used in error locations.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, YamlError> {
        Self::parse_with(source_name, text, &IdentityOverride::default())
    }

    /// [`Config::parse`] with identity parts given outside the file.
    pub fn parse_with(
        source_name: &str,
        text: &str,
        identity: &IdentityOverride,
    ) -> Result<Self, YamlError> {
        let raw: RawConfig = yaml::parse(source_name, text)?;
        crate::validate::Validator { source_name }.config(raw, identity)
    }
}

#[cfg(test)]
mod tests;
