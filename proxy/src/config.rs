//! The sidecar configuration: one YAML file, unknown fields rejected, validated into plain
//! structs that the rest of the proxy receives. Nothing else in the proxy reads files or the
//! environment for settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use picket_ca::{SpiffeId, TrustDomain, WorkloadName};
use picket_common::text::{MAX_TEXT_BYTES, TextError, read_text};
use serde::Deserialize;

use crate::yaml::{self, Spanned, YamlError};

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
    /// Base URL, `https://host:port`.
    pub url: String,
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
}

/// Which server identity an outbound connection accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Exactly this workload.
    Exact(picket_ca::SpiffeId),
    /// Any workload of this trust domain (transparent destinations configured without a pinned
    /// identity: the chain and trust domain are checked, the workload is not).
    AnyIn(picket_ca::TrustDomain),
}

impl PeerIdentity {
    /// The trust domain the peer must belong to.
    pub fn trust_domain(&self) -> &picket_ca::TrustDomain {
        match self {
            Self::Exact(id) => id.trust_domain(),
            Self::AnyIn(td) => td,
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "{id}"),
            Self::AnyIn(td) => write!(f, "any identity of {td}"),
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
struct RawConfig {
    identity: RawIdentity,
    ca: RawCa,
    inbound: RawInbound,
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
    permissive_ports: Vec<u16>,
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
        Validator { source_name }.config(raw, identity)
    }
}

struct Validator<'a> {
    source_name: &'a str,
}

impl Validator<'_> {
    fn err<T>(&self, at: &Spanned<T>, msg: impl Into<String>) -> YamlError {
        yaml::error_at(self.source_name, at, msg)
    }

    fn addr(&self, v: &Spanned<String>, field: &str) -> Result<SocketAddr, YamlError> {
        v.value.parse().map_err(|_| {
            self.err(
                v,
                format!("{field}: {:?} is not an IP:port address", v.value),
            )
        })
    }

    fn addr_or(
        &self,
        v: &Option<Spanned<String>>,
        default: &str,
        field: &str,
    ) -> Result<SocketAddr, YamlError> {
        match v {
            Some(v) => self.addr(v, field),
            None => default.parse().map_err(|_| YamlError {
                source_name: self.source_name.to_owned(),
                line: None,
                column: None,
                message: format!("{field}: built-in default {default} is invalid"),
            }),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<String>>,
        default: Duration,
        field: &str,
    ) -> Result<Duration, YamlError> {
        let Some(v) = v else { return Ok(default) };
        let d = picket_common::duration::parse(&v.value)
            .map_err(|e| self.err(v, format!("{field}: {e}")))?;
        if d.is_zero() {
            return Err(self.err(v, format!("{field}: must be greater than zero")));
        }
        Ok(d)
    }

    fn inbound_mode(&self, raw: &RawInbound) -> Result<InboundMode, YamlError> {
        let ports = || {
            if raw.permissive_ports.contains(&0) {
                Err(YamlError {
                    source_name: self.source_name.to_owned(),
                    line: None,
                    column: None,
                    message: "inbound.permissive_ports: 0 is not a port".into(),
                })
            } else {
                Ok(raw.permissive_ports.clone())
            }
        };
        match raw.mode.as_ref().map(|m| (m, m.value.as_str())) {
            None | Some((_, "strict")) if raw.permissive_ports.is_empty() => {
                Ok(InboundMode::Strict)
            }
            None | Some((_, "strict")) => Ok(InboundMode::PermissivePorts(ports()?)),
            Some((m, "permissive")) => {
                if raw.permissive_ports.is_empty() {
                    Ok(InboundMode::Permissive)
                } else {
                    Err(self.err(
                        m,
                        "inbound.permissive_ports: mode permissive already accepts plaintext on \
                         every port; list ports with mode strict",
                    ))
                }
            }
            Some((m, other)) => Err(self.err(
                m,
                format!("inbound.mode: {other:?} is not strict or permissive"),
            )),
        }
    }

    fn health(&self, raw: &RawHealth) -> Result<HealthConfig, YamlError> {
        let listen = self.addr_or(&raw.listen, DEFAULT_HEALTH, "health.listen")?;
        let mut probes = BTreeMap::new();
        for p in &raw.probes {
            let name = p.name.value.clone();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._/".contains(&b));
            if !valid {
                return Err(self.err(
                    &p.name,
                    "health.probes.name: use lowercase letters, digits, '-', '.', '_' and '/'",
                ));
            }
            let port = |port: &Spanned<u16>| {
                if port.value == 0 {
                    Err(self.err(port, "health.probes: port 0 is not a port"))
                } else {
                    Ok(port.value)
                }
            };
            let check = match (&p.http, &p.tcp, &p.grpc) {
                (Some(h), None, None) => {
                    let path = h.path.as_ref().map_or("/", |p| p.value.as_str());
                    if let Some(at) = h.path.as_ref().filter(|p| !p.value.starts_with('/')) {
                        return Err(self.err(at, "health.probes.http.path: must start with '/'"));
                    }
                    if let Some(at) = h
                        .path
                        .as_ref()
                        .filter(|p| p.value.parse::<http::uri::PathAndQuery>().is_err())
                    {
                        return Err(self.err(at, "health.probes.http.path: not a valid URL path"));
                    }
                    let https = match h.scheme.as_ref().map(|s| (s, s.value.as_str())) {
                        None | Some((_, "HTTP")) => false,
                        Some((_, "HTTPS")) => true,
                        Some((at, other)) => {
                            return Err(self.err(
                                at,
                                format!(
                                    "health.probes.http.scheme: {other:?} is not HTTP or HTTPS"
                                ),
                            ));
                        }
                    };
                    let mut headers = Vec::with_capacity(h.headers.len());
                    for header in &h.headers {
                        let ok = http::HeaderName::from_bytes(header.name.value.as_bytes()).is_ok()
                            && http::HeaderValue::from_str(&header.value).is_ok();
                        if !ok {
                            return Err(self.err(
                                &header.name,
                                "health.probes.http.headers: not a valid header name and value",
                            ));
                        }
                        headers.push((header.name.value.clone(), header.value.clone()));
                    }
                    ProbeCheck::Http {
                        port: port(&h.port)?,
                        path: path.to_owned(),
                        https,
                        headers,
                    }
                }
                (None, Some(t), None) => ProbeCheck::Tcp {
                    port: port(&t.port)?,
                },
                (None, None, Some(g)) => ProbeCheck::Grpc {
                    port: port(&g.port)?,
                    service: g.service.clone(),
                },
                _ => {
                    return Err(self.err(
                        &p.name,
                        "health.probes: give exactly one of http, tcp and grpc",
                    ));
                }
            };
            let timeout =
                self.duration(&p.timeout, DEFAULT_PROBE_TIMEOUT, "health.probes.timeout")?;
            if probes
                .insert(name.clone(), AppProbe { check, timeout })
                .is_some()
            {
                return Err(self.err(&p.name, format!("health.probes: duplicate name {name:?}")));
            }
        }
        Ok(HealthConfig { listen, probes })
    }

    fn jwt(&self, raw: &RawJwt) -> Result<crate::jwt::JwtSettings, YamlError> {
        let d = crate::jwt::JwtSettings::default();
        let clock_skew = match &raw.clock_skew {
            None => d.clock_skew,
            Some(v) => {
                let skew = picket_common::duration::parse(&v.value)
                    .map_err(|e| self.err(v, format!("jwt.clock_skew: {e}")))?;
                if skew > Duration::from_secs(300) {
                    return Err(self.err(v, "jwt.clock_skew: at most 5m"));
                }
                skew
            }
        };
        let log_token = match raw.log_token.as_ref().map(|v| (v, v.value.as_str())) {
            None => d.log_token,
            Some((_, "off")) => crate::jwt::TokenLog::Off,
            Some((_, "hash")) => crate::jwt::TokenLog::Hash,
            Some((_, "sub")) => crate::jwt::TokenLog::Subject,
            Some((v, other)) => {
                return Err(self.err(
                    v,
                    format!("jwt.log_token: {other:?} is not off, hash or sub"),
                ));
            }
        };
        Ok(crate::jwt::JwtSettings {
            trust_roots: raw.trust_roots.clone().unwrap_or(d.trust_roots),
            fetch_timeout: self.duration(
                &raw.fetch_timeout,
                d.fetch_timeout,
                "jwt.fetch_timeout",
            )?,
            refresh_interval: self.duration(
                &raw.refresh_interval,
                d.refresh_interval,
                "jwt.refresh_interval",
            )?,
            refetch_min_interval: self.duration(
                &raw.refetch_min_interval,
                d.refetch_min_interval,
                "jwt.refetch_min_interval",
            )?,
            clock_skew,
            log_token,
            max_principal_bytes: self.positive(
                &raw.max_principal_bytes,
                d.max_principal_bytes,
                "jwt.max_principal_bytes",
            )?,
        })
    }

    fn positive(
        &self,
        v: &Option<Spanned<usize>>,
        default: usize,
        field: &str,
    ) -> Result<usize, YamlError> {
        match v {
            Some(v) if v.value == 0 => Err(self.err(v, format!("{field}: must be at least 1"))),
            Some(v) => Ok(v.value),
            None => Ok(default),
        }
    }

    /// One identity part from the file or the override; both given and different is an error.
    fn identity_part(
        &self,
        file: &Option<Spanned<String>>,
        given: &Option<String>,
        field: &str,
        flag: &str,
    ) -> Result<String, YamlError> {
        match (file, given) {
            (Some(f), Some(g)) if &f.value != g => Err(self.err(
                f,
                format!(
                    "identity.{field}: the file says {:?} but {flag} says {g:?}",
                    f.value
                ),
            )),
            (_, Some(g)) => Ok(g.clone()),
            (Some(f), None) => Ok(f.value.clone()),
            (None, None) => Err(YamlError {
                source_name: self.source_name.to_owned(),
                line: None,
                column: None,
                message: format!("identity.{field} is missing: set it in the file or with {flag}"),
            }),
        }
    }

    fn config(&self, raw: RawConfig, given: &IdentityOverride) -> Result<Config, YamlError> {
        let td: TrustDomain = raw.identity.trust_domain.value.parse().map_err(|e| {
            self.err(
                &raw.identity.trust_domain,
                format!("identity.trust_domain: {e}"),
            )
        })?;
        let namespace = self.identity_part(
            &raw.identity.namespace,
            &given.namespace,
            "namespace",
            "--namespace (PICKET_NAMESPACE)",
        )?;
        let service_account = self.identity_part(
            &raw.identity.service_account,
            &given.service_account,
            "service_account",
            "--service-account (PICKET_SERVICE_ACCOUNT)",
        )?;
        let workload = WorkloadName::new(&namespace, &service_account).map_err(|e| {
            let at = raw
                .identity
                .namespace
                .as_ref()
                .unwrap_or(&raw.identity.trust_domain);
            self.err(at, format!("identity: {e}"))
        })?;
        let identity = SpiffeId::new(td.clone(), workload);

        if !raw.ca.url.value.starts_with("https://") {
            return Err(self.err(&raw.ca.url, "ca.url: must be an https:// URL"));
        }

        let inbound = InboundConfig {
            listen: self.addr_or(&raw.inbound.listen, DEFAULT_INBOUND, "inbound.listen")?,
            app: match &raw.inbound.app {
                Some(a) => Some(self.addr(a, "inbound.app")?),
                None if raw.inbound.transparent => None,
                None => {
                    return Err(YamlError {
                        source_name: self.source_name.to_owned(),
                        line: None,
                        column: None,
                        message: "inbound.app is missing: it is required unless inbound.transparent is true".into(),
                    });
                }
            },
            transparent: raw.inbound.transparent,
            mode: self.inbound_mode(&raw.inbound)?,
        };
        let health = match &raw.health {
            Some(h) => Some(self.health(h)?),
            None => None,
        };

        let mut upstreams: Vec<Upstream> = Vec::with_capacity(raw.outbound.upstreams.len());
        for u in raw.outbound.upstreams {
            let name = u.name.value.clone();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            {
                return Err(self.err(
                    &u.name,
                    "outbound.upstreams.name: use lowercase letters, digits, '-', '.' and '_'",
                ));
            }
            if upstreams.iter().any(|x| x.name == name) {
                return Err(self.err(
                    &u.name,
                    format!("outbound.upstreams: duplicate name {name:?}"),
                ));
            }
            let peer: SpiffeId =
                u.identity.value.parse().map_err(|e| {
                    self.err(&u.identity, format!("outbound.upstreams.identity: {e}"))
                })?;
            if peer.trust_domain() != &td {
                return Err(self.err(
                    &u.identity,
                    format!(
                        "outbound.upstreams.identity: {peer} is outside this workload's trust domain {td}"
                    ),
                ));
            }
            let listen = match &u.listen {
                Some(l) => Some(self.addr(l, "outbound.upstreams.listen")?),
                None => None,
            };
            if listen.is_none() && u.protocol == Protocol::Tcp {
                return Err(self.err(
                    &u.name,
                    "outbound.upstreams: a tcp upstream needs its own listen address",
                ));
            }
            upstreams.push(Upstream {
                name,
                listen,
                address: self.addr(&u.address, "outbound.upstreams.address")?,
                identity: PeerIdentity::Exact(peer),
                protocol: u.protocol,
            });
        }
        let mut meshed = Vec::with_capacity(raw.outbound.meshed.len());
        for m in &raw.outbound.meshed {
            let network = picket_common::Cidr::parse(&m.cidr.value)
                .map_err(|e| self.err(&m.cidr, format!("outbound.meshed.cidr: {e}")))?;
            let identity = if m.identity.value == "any" {
                PeerIdentity::AnyIn(td.clone())
            } else {
                let id: SpiffeId = m.identity.value.parse().map_err(|e| {
                    self.err(
                        &m.identity,
                        format!("outbound.meshed.identity: {e} (or \"any\")"),
                    )
                })?;
                if id.trust_domain() != &td {
                    return Err(self.err(
                        &m.identity,
                        format!("outbound.meshed.identity: {id} is outside this workload's trust domain {td}"),
                    ));
                }
                PeerIdentity::Exact(id)
            };
            meshed.push(MeshedDestination {
                network,
                ports: m.ports.clone(),
                identity,
            });
        }
        let passthrough = match &raw.outbound.passthrough {
            None => true,
            Some(v) => match v.value.as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(self.err(
                        v,
                        format!("outbound.passthrough: {other:?} is not allow or deny"),
                    ));
                }
            },
        };
        let outbound = OutboundConfig {
            listen: self.addr_or(&raw.outbound.listen, DEFAULT_OUTBOUND, "outbound.listen")?,
            upstreams,
            transparent: raw.outbound.transparent,
            meshed,
            passthrough,
            opaque_ports: raw.outbound.opaque_ports.clone(),
        };

        let t = &raw.timeouts;
        let timeouts = Timeouts {
            handshake: self.duration(
                &t.handshake,
                Duration::from_secs(10),
                "timeouts.handshake",
            )?,
            connect: self.duration(&t.connect, Duration::from_secs(5), "timeouts.connect")?,
            request: self.duration(&t.request, Duration::from_secs(30), "timeouts.request")?,
            idle: self.duration(&t.idle, Duration::from_secs(300), "timeouts.idle")?,
            stall: self.duration(&t.stall, Duration::from_secs(30), "timeouts.stall")?,
            drain: self.duration(&t.drain, Duration::from_secs(30), "timeouts.drain")?,
            detect: self.duration(&t.detect, Duration::from_secs(1), "timeouts.detect")?,
        };
        let limits = Limits {
            max_connections: self.positive(
                &raw.limits.max_connections,
                10_000,
                "limits.max_connections",
            )?,
            max_requests: self.positive(&raw.limits.max_requests, 10_000, "limits.max_requests")?,
            max_header_bytes: self.positive(
                &raw.limits.max_header_bytes,
                64 * 1024,
                "limits.max_header_bytes",
            )?,
        };

        let mut load = picket_policy::LoadOptions::default();
        if let Some(a) = &raw.policy.default_action {
            load.default_action = match a.value.as_str() {
                "deny" => picket_policy::DefaultAction::Deny,
                "allow" => picket_policy::DefaultAction::Allow,
                "audit-only" => picket_policy::DefaultAction::AuditOnly,
                other => {
                    return Err(self.err(
                        a,
                        format!(
                            "policy.default_action: {other:?} is not deny, allow or audit-only"
                        ),
                    ));
                }
            };
        }
        if let Some(ns) = &raw.policy.root_namespace {
            WorkloadName::new(&ns.value, "x")
                .map_err(|e| self.err(ns, format!("policy.root_namespace: {e}")))?;
            load.root_namespace = ns.value.clone();
        }
        load.opaque_tcp_ports = raw.policy.opaque_ports.clone();
        let policy = PolicyConfig {
            path: raw.policy.path.clone(),
            load,
            deny_details: raw.policy.deny_details.unwrap_or(true),
        };
        let mut path_opts = picket_policy::normalize::PathOptions::default();
        if let Some(v) = &raw.http.encoded_slashes {
            path_opts.encoded_slashes = match v.value.as_str() {
                "reject" => picket_policy::normalize::EncodedSlashes::Reject,
                "decode" => picket_policy::normalize::EncodedSlashes::Decode,
                "keep" => picket_policy::normalize::EncodedSlashes::Keep,
                other => {
                    return Err(self.err(
                        v,
                        format!("http.encoded_slashes: {other:?} is not reject, decode or keep"),
                    ));
                }
            };
        }
        let allow_header_underscores = match &raw.http.header_underscores {
            None => false,
            Some(v) => match v.value.as_str() {
                "reject" => false,
                "allow" => true,
                other => {
                    return Err(self.err(
                        v,
                        format!("http.header_underscores: {other:?} is not reject or allow"),
                    ));
                }
            },
        };
        let mut http = HttpConfig {
            path: path_opts,
            allow_header_underscores,
            ..HttpConfig::default()
        };
        if let Some(list) = &raw.http.strip_headers {
            http.strip_headers = list
                .iter()
                .map(|p| {
                    crate::forward::HeaderPattern::parse(&p.value)
                        .map_err(|e| self.err(p, format!("http.strip_headers: {e}")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = &raw.http.forwarded {
            http.forwarded = match v.value.as_str() {
                "drop" => crate::forward::ForwardedMode::Drop,
                "append" => crate::forward::ForwardedMode::Append,
                "keep" => crate::forward::ForwardedMode::Keep,
                other => {
                    return Err(self.err(
                        v,
                        format!("http.forwarded: {other:?} is not drop, append or keep"),
                    ));
                }
            };
        }

        let jwt = self.jwt(&raw.jwt)?;
        let telemetry = crate::telemetry::validate(raw.telemetry, self.source_name)?;
        Ok(Config {
            jwt,
            telemetry,
            health,
            labels: raw.workload.labels,
            policy,
            http,
            identity,
            ca: CaConfig {
                url: raw.ca.url.value,
                trust_bundle: raw.ca.trust_bundle,
                join_token_file: raw.ca.join_token_file,
            },
            inbound,
            outbound,
            admin: AdminConfig {
                listen: self.addr_or(&raw.admin.listen, DEFAULT_ADMIN, "admin.listen")?,
            },
            timeouts,
            limits,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = "\
identity: { trust_domain: cluster.local, namespace: shop, service_account: frontend }
ca: { url: \"https://127.0.0.1:7443\", trust_bundle: /b.pem, join_token_file: /t }
inbound: { app: \"127.0.0.1:8080\" }
outbound:
  upstreams:
  - name: orders
    listen: \"127.0.0.1:7150\"
    address: \"10.0.0.2:7143\"
    identity: spiffe://cluster.local/ns/shop/sa/orders
";

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse("s.yaml", GOOD).unwrap();
        assert_eq!(
            c.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
        assert_eq!(c.inbound.listen.to_string(), DEFAULT_INBOUND);
        assert_eq!(c.outbound.listen.to_string(), DEFAULT_OUTBOUND);
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN);
        assert_eq!(c.outbound.upstreams[0].protocol, Protocol::Http);
        assert_eq!(c.timeouts.handshake, Duration::from_secs(10));
        assert_eq!(c.limits.max_connections, 10_000);
    }

    fn error(text: &str) -> YamlError {
        Config::parse("s.yaml", text).unwrap_err()
    }

    #[test]
    fn unknown_field_is_an_error_with_location() {
        let e = error(&GOOD.replace("inbound: {", "inbound: { color: red,"));
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().starts_with("s.yaml:3:"), "{e}");
        assert!(e.to_string().contains("color"), "{e}");
    }

    #[test]
    fn bad_values_name_field_and_line() {
        for (from, to, line, needle) in [
            ("\"127.0.0.1:8080\"", "\"localhost\"", 3, "inbound.app"),
            (
                "https://127.0.0.1:7443",
                "http://127.0.0.1:7443",
                2,
                "ca.url",
            ),
            ("sa/orders", "sa/Orders", 9, "identity"),
            ("10.0.0.2:7143", "10.0.0.2", 8, "outbound.upstreams.address"),
        ] {
            let e = error(&GOOD.replace(from, to));
            assert_eq!(e.line, Some(line), "{from}: {e}");
            assert!(e.message.contains(needle), "{from}: {e}");
        }
    }

    #[test]
    fn upstream_outside_trust_domain_is_refused() {
        let e = error(&GOOD.replace(
            "spiffe://cluster.local/ns/shop/sa/orders",
            "spiffe://other.example/ns/shop/sa/orders",
        ));
        assert!(
            e.message.contains("outside this workload's trust domain"),
            "{e}"
        );
    }

    #[test]
    fn zero_and_malformed_durations_are_refused() {
        let e = error(&format!("{GOOD}timeouts: {{ idle: 0s }}\n"));
        assert!(e.message.contains("timeouts.idle"), "{e}");
        let e = error(&format!("{GOOD}timeouts: {{ idle: soon }}\n"));
        assert!(e.message.contains("timeouts.idle"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = error(&format!(
            "{GOOD}admin: {{ listen: \"127.0.0.1:1\" }}\nadmin: {{ listen: \"127.0.0.1:2\" }}\n"
        ));
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn tcp_upstream_needs_a_listener() {
        let e = error(
            &GOOD
                .replace("    listen: \"127.0.0.1:7150\"\n", "")
                .replacen("orders\n", "orders\n    protocol: tcp\n", 1),
        );
        assert!(e.message.contains("tcp upstream needs"), "{e}");
    }

    #[test]
    fn inbound_mode_and_health_probes_are_validated() {
        let c = Config::parse("s.yaml", GOOD).unwrap();
        assert_eq!(c.inbound.mode, InboundMode::Strict);
        assert!(c.health.is_none());
        let with = |inbound_extra: &str| {
            GOOD.replacen("inbound: {", &format!("inbound: {{ {inbound_extra}"), 1)
        };
        let c = Config::parse("s.yaml", &with("mode: permissive,")).unwrap();
        assert!(c.inbound.mode.permits_plaintext(1));
        let c = Config::parse("s.yaml", &with("permissive_ports: [8080],")).unwrap();
        assert!(c.inbound.mode.permits_plaintext(8080) && !c.inbound.mode.permits_plaintext(8081));
        for (text, needle) in [
            (with("mode: open,"), "inbound.mode"),
            (
                with("mode: permissive, permissive_ports: [1],"),
                "permissive_ports",
            ),
            (
                format!("{GOOD}health: {{ probes: [{{ name: a/livez }}] }}\n"),
                "exactly one of",
            ),
            (
                format!("{GOOD}health: {{ probes: [{{ name: A, tcp: {{ port: 1 }} }}] }}\n"),
                "health.probes.name",
            ),
            (
                format!(
                    "{GOOD}health: {{ probes: [{{ name: a, http: {{ port: 1, scheme: FTP }} }}] }}\n"
                ),
                "scheme",
            ),
            (
                format!(
                    "{GOOD}health: {{ probes: [{{ name: a, tcp: {{ port: 1 }} }}, {{ name: a, tcp: {{ port: 2 }} }}] }}\n"
                ),
                "duplicate",
            ),
        ] {
            let e = error(&text);
            assert!(e.message.contains(needle), "{needle}: {e}");
        }
        let c = Config::parse(
            "s.yaml",
            &format!("{GOOD}health: {{ probes: [{{ name: app/readyz, grpc: {{ port: 9000 }}, timeout: 2s }}] }}\n"),
        )
        .unwrap();
        let health = c.health.unwrap();
        assert_eq!(health.listen.to_string(), DEFAULT_HEALTH);
        assert_eq!(health.probes["app/readyz"].timeout, Duration::from_secs(2));
    }
}
