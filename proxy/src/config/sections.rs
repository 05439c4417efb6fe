//! The sidecar configuration's sections, validated by the one [`Validator`] into the
//! [`Config`], one method per section. Every error points at the value, or at the section a
//! missing value belongs in, as `file:line:column`.

use std::collections::BTreeMap;
use std::time::Duration;

use picket_ca::{SpiffeId, TrustDomain, WorkloadName};

use super::*;
use crate::validate::{Validator, Zero};
use crate::yaml::{Spanned, YamlError};

impl Validator<'_> {
    /// The whole configuration, section by section.
    pub(crate) fn config(
        &self,
        raw: RawConfig,
        given: &IdentityOverride,
    ) -> Result<Config, YamlError> {
        let identity = self.identity(&raw.identity, given)?;
        let td = identity.trust_domain().clone();
        let ca = self.ca(&raw.ca)?;
        Ok(Config {
            inbound: self.inbound(&raw.inbound)?,
            health: raw.health.as_ref().map(|h| self.health(h)).transpose()?,
            outbound: self.outbound(&raw.outbound, &td)?,
            timeouts: self.timeouts(&raw.timeouts)?,
            limits: self.limits(&raw.limits)?,
            policy: self.policy(&raw.policy)?,
            http: self.http(&raw.http)?,
            jwt: self.jwt(&raw.jwt)?,
            controller: raw
                .controller
                .as_ref()
                .map(|c| self.controller(c, &td))
                .transpose()?,
            telemetry: self.telemetry(raw.telemetry)?,
            labels: raw.workload.labels,
            identity,
            ca,
            admin: AdminConfig {
                listen: self.addr_or(raw.admin.listen.as_ref(), DEFAULT_ADMIN, "admin.listen")?,
            },
        })
    }

    /// `ca:`: the CA's URL first, then `fallback_urls`, each `https://` and listed once.
    fn ca(&self, raw: &RawCa) -> Result<CaConfig, YamlError> {
        if !raw.url.value.starts_with("https://") {
            return Err(self.err(&raw.url, "ca.url: must be an https:// URL"));
        }
        let mut urls = vec![raw.url.value.clone()];
        for (i, url) in raw.fallback_urls.iter().enumerate() {
            if !url.value.starts_with("https://") {
                return Err(self.err(
                    url,
                    format!("ca.fallback_urls[{i}]: must be an https:// URL"),
                ));
            }
            if urls.contains(&url.value) {
                return Err(self.err(
                    url,
                    format!("ca.fallback_urls[{i}]: {:?} is already listed", url.value),
                ));
            }
            urls.push(url.value.clone());
        }
        Ok(CaConfig {
            urls,
            trust_bundle: raw.trust_bundle.clone(),
            join_token_file: raw.join_token_file.clone(),
        })
    }

    /// `controller:`: where the controller serves (`host:port`) and the SPIFFE ID it must
    /// present (in this workload's trust domain).
    fn controller(
        &self,
        raw: &RawController,
        td: &TrustDomain,
    ) -> Result<crate::discover::controller::ControllerSource, YamlError> {
        if crate::discover::controller::server_name(&raw.address.value).is_none() {
            return Err(self.err(
                &raw.address,
                format!(
                    "controller.address: {:?} is not host:port (a port from 1 to 65535)",
                    raw.address.value
                ),
            ));
        }
        Ok(crate::discover::controller::ControllerSource {
            address: raw.address.value.clone(),
            identity: self.peer(&raw.identity, td, "controller.identity", "")?,
        })
    }

    fn identity(
        &self,
        raw: &Spanned<RawIdentity>,
        given: &IdentityOverride,
    ) -> Result<SpiffeId, YamlError> {
        let id = &raw.value;
        let td: TrustDomain = id
            .trust_domain
            .value
            .parse()
            .map_err(|e| self.err(&id.trust_domain, format!("identity.trust_domain: {e}")))?;
        let namespace = self.identity_part(
            raw,
            id.namespace.as_ref(),
            given.namespace.as_ref(),
            "namespace",
            "--namespace (PICKET_NAMESPACE)",
        )?;
        let service_account = self.identity_part(
            raw,
            id.service_account.as_ref(),
            given.service_account.as_ref(),
            "service_account",
            "--service-account (PICKET_SERVICE_ACCOUNT)",
        )?;
        let workload = WorkloadName::new(&namespace, &service_account).map_err(|e| {
            let at = id.namespace.as_ref().unwrap_or(&id.trust_domain);
            self.err(at, format!("identity: {e}"))
        })?;
        Ok(SpiffeId::new(td, workload))
    }

    /// One identity part from the file or the override; both given and different is an error,
    /// neither given is an error at the `identity` section.
    fn identity_part(
        &self,
        section: &Spanned<RawIdentity>,
        file: Option<&Spanned<String>>,
        given: Option<&String>,
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
            (None, None) => Err(self.err(
                section,
                format!("identity.{field} is missing: set it in the file or with {flag}"),
            )),
        }
    }

    fn inbound(&self, raw: &Spanned<RawInbound>) -> Result<InboundConfig, YamlError> {
        let inbound = &raw.value;
        Ok(InboundConfig {
            listen: self.addr_or(inbound.listen.as_ref(), DEFAULT_INBOUND, "inbound.listen")?,
            app: match &inbound.app {
                Some(a) => Some(self.addr(a, "inbound.app")?),
                None if inbound.transparent => None,
                None => {
                    return Err(self.err(
                        raw,
                        "inbound.app is missing: it is required unless inbound.transparent is \
                         true",
                    ));
                }
            },
            transparent: inbound.transparent,
            mode: self.inbound_mode(inbound)?,
        })
    }

    fn inbound_mode(&self, raw: &RawInbound) -> Result<InboundMode, YamlError> {
        if let Some(zero) = raw.permissive_ports.iter().find(|p| p.value == 0) {
            return Err(self.err(zero, "inbound.permissive_ports: 0 is not a port"));
        }
        let ports: Vec<u16> = raw.permissive_ports.iter().map(|p| p.value).collect();
        let permissive = self.choice(
            raw.mode.as_ref(),
            false,
            "inbound.mode",
            &[("strict", false), ("permissive", true)],
        )?;
        match (permissive, ports.is_empty(), &raw.mode) {
            (false, true, _) => Ok(InboundMode::Strict),
            (false, false, _) => Ok(InboundMode::PermissivePorts(ports)),
            (true, true, _) => Ok(InboundMode::Permissive),
            (true, false, Some(m)) => Err(self.err(
                m,
                "inbound.permissive_ports: mode permissive already accepts plaintext on every \
                 port; list ports with mode strict",
            )),
            (true, false, None) => Ok(InboundMode::PermissivePorts(ports)),
        }
    }

    fn health(&self, raw: &RawHealth) -> Result<HealthConfig, YamlError> {
        let listen = self.addr_or(raw.listen.as_ref(), DEFAULT_HEALTH, "health.listen")?;
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
            let probe = AppProbe {
                check: self.probe_check(p)?,
                timeout: self.duration(
                    p.timeout.as_ref(),
                    DEFAULT_PROBE_TIMEOUT,
                    "health.probes.timeout",
                    Zero::Refused,
                )?,
            };
            if probes.insert(name.clone(), probe).is_some() {
                return Err(self.err(&p.name, format!("health.probes: duplicate name {name:?}")));
            }
        }
        Ok(HealthConfig { listen, probes })
    }

    fn port(&self, port: &Spanned<u16>) -> Result<u16, YamlError> {
        if port.value == 0 {
            Err(self.err(port, "health.probes: port 0 is not a port"))
        } else {
            Ok(port.value)
        }
    }

    fn probe_check(&self, p: &RawProbe) -> Result<ProbeCheck, YamlError> {
        match (&p.http, &p.tcp, &p.grpc) {
            (Some(h), None, None) => self.http_probe(h),
            (None, Some(t), None) => Ok(ProbeCheck::Tcp {
                port: self.port(&t.port)?,
            }),
            (None, None, Some(g)) => Ok(ProbeCheck::Grpc {
                port: self.port(&g.port)?,
                service: g.service.clone(),
            }),
            _ => Err(self.err(
                &p.name,
                "health.probes: give exactly one of http, tcp and grpc",
            )),
        }
    }

    fn http_probe(&self, h: &RawHttpProbe) -> Result<ProbeCheck, YamlError> {
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
        let https = self.choice(
            h.scheme.as_ref(),
            false,
            "health.probes.http.scheme",
            &[("HTTP", false), ("HTTPS", true)],
        )?;
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
        Ok(ProbeCheck::Http {
            port: self.port(&h.port)?,
            path: h.path.as_ref().map_or("/", |p| p.value.as_str()).to_owned(),
            https,
            headers,
        })
    }

    fn outbound(&self, raw: &RawOutbound, td: &TrustDomain) -> Result<OutboundConfig, YamlError> {
        let mut upstreams: Vec<Upstream> = Vec::with_capacity(raw.upstreams.len());
        for u in &raw.upstreams {
            let upstream = self.upstream(u, td)?;
            if upstreams.iter().any(|x| x.name == upstream.name) {
                return Err(self.err(
                    &u.name,
                    format!("outbound.upstreams: duplicate name {:?}", upstream.name),
                ));
            }
            upstreams.push(upstream);
        }
        let meshed = raw
            .meshed
            .iter()
            .map(|m| self.meshed(m, td))
            .collect::<Result<_, _>>()?;
        Ok(OutboundConfig {
            listen: self.addr_or(raw.listen.as_ref(), DEFAULT_OUTBOUND, "outbound.listen")?,
            upstreams,
            transparent: raw.transparent,
            meshed,
            passthrough: self.choice(
                raw.passthrough.as_ref(),
                true,
                "outbound.passthrough",
                &[("allow", true), ("deny", false)],
            )?,
            opaque_ports: raw.opaque_ports.clone(),
            block_metadata: self.choice(
                raw.metadata.as_ref(),
                true,
                "outbound.metadata",
                &[("block", true), ("alert", false)],
            )?,
            destinations: self.destinations(&raw.destinations, td)?,
            unmeshed: self.choice(
                raw.unmeshed.as_ref(),
                Unmeshed::Deny,
                "outbound.unmeshed",
                &[("deny", Unmeshed::Deny), ("plaintext", Unmeshed::Plaintext)],
            )?,
            balancer: self.balancer(&raw.balancer)?,
        })
    }

    /// `outbound.destinations`: each address listed once, each endpoint once per destination,
    /// every identity a SPIFFE ID of this trust domain.
    fn destinations(
        &self,
        raw: &[RawDestination],
        td: &TrustDomain,
    ) -> Result<Vec<(std::net::SocketAddr, crate::discover::Destination)>, YamlError> {
        use crate::discover::{Destination, Endpoint};
        let mut out: Vec<(std::net::SocketAddr, Destination)> = Vec::with_capacity(raw.len());
        for d in raw {
            let address = self.addr(&d.address, "outbound.destinations.address")?;
            if out.iter().any(|(a, _)| *a == address) {
                return Err(self.err(
                    &d.address,
                    format!("outbound.destinations: {address} is listed twice"),
                ));
            }
            if let Some(service) = &d.service {
                let ok = service.value.split_once('/').is_some_and(|(ns, name)| {
                    WorkloadName::new(ns, name).is_ok() && !name.contains('/')
                });
                if !ok {
                    return Err(self.err(
                        service,
                        format!(
                            "outbound.destinations.service: {:?} is not namespace/name",
                            service.value
                        ),
                    ));
                }
            }
            let mut endpoints: Vec<Endpoint> = Vec::with_capacity(d.endpoints.len());
            for e in &d.endpoints {
                let at = self.addr(&e.address, "outbound.destinations.endpoints.address")?;
                if endpoints.iter().any(|x| x.address == at) {
                    return Err(self.err(
                        &e.address,
                        format!("outbound.destinations.endpoints: {at} is listed twice"),
                    ));
                }
                let identity = match &e.identity {
                    Some(id) => {
                        let field = "outbound.destinations.endpoints.identity";
                        let hint = " (leave it out for an endpoint without a sidecar)";
                        Some(self.peer(id, td, field, hint)?.to_string())
                    }
                    None => None,
                };
                endpoints.push(Endpoint {
                    address: at,
                    identity,
                });
            }
            out.push((
                address,
                Destination {
                    service: d.service.as_ref().map(|s| s.value.clone()),
                    endpoints,
                },
            ));
        }
        Ok(out)
    }

    /// `outbound.balancer`.
    fn balancer(&self, raw: &RawBalancer) -> Result<BalancerSettings, YamlError> {
        let d = BalancerSettings::default();
        let failures = self.positive(
            raw.failures.as_ref(),
            d.failures as usize,
            "outbound.balancer.failures",
        )?;
        let failures = match (u32::try_from(failures), &raw.failures) {
            (Ok(n), _) if n <= 1000 => n,
            (_, Some(v)) => return Err(self.err(v, "outbound.balancer.failures: at most 1000")),
            (_, None) => d.failures,
        };
        let backoff = self.duration(
            raw.backoff.as_ref(),
            d.backoff,
            "outbound.balancer.backoff",
            Zero::Refused,
        )?;
        let backoff_max = self.duration(
            raw.backoff_max.as_ref(),
            d.backoff_max,
            "outbound.balancer.backoff_max",
            Zero::Refused,
        )?;
        if let Some(v) = raw.backoff_max.as_ref()
            && backoff_max < backoff
        {
            return Err(self.err(
                v,
                "outbound.balancer.backoff_max: must not be shorter than outbound.balancer.backoff",
            ));
        }
        Ok(BalancerSettings {
            pending_wait: self.duration(
                raw.pending_wait.as_ref(),
                d.pending_wait,
                "outbound.balancer.pending_wait",
                Zero::Allowed,
            )?,
            failures,
            backoff,
            backoff_max,
            decay: self.duration(
                raw.decay.as_ref(),
                d.decay,
                "outbound.balancer.decay",
                Zero::Refused,
            )?,
        })
    }

    /// A peer's SPIFFE ID, which must be in this workload's trust domain; `hint` follows a
    /// parse error.
    fn peer(
        &self,
        v: &Spanned<String>,
        td: &TrustDomain,
        field: &str,
        hint: &str,
    ) -> Result<SpiffeId, YamlError> {
        let id: SpiffeId = v
            .value
            .parse()
            .map_err(|e| self.err(v, format!("{field}: {e}{hint}")))?;
        if id.trust_domain() != td {
            return Err(self.err(
                v,
                format!("{field}: {id} is outside this workload's trust domain {td}"),
            ));
        }
        Ok(id)
    }

    fn upstream(&self, u: &RawUpstream, td: &TrustDomain) -> Result<Upstream, YamlError> {
        let name = u.name.value.clone();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !valid {
            return Err(self.err(
                &u.name,
                "outbound.upstreams.name: use lowercase letters, digits, '-', '.' and '_'",
            ));
        }
        let peer = self.peer(&u.identity, td, "outbound.upstreams.identity", "")?;
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
        Ok(Upstream {
            name,
            listen,
            address: self.addr(&u.address, "outbound.upstreams.address")?,
            identity: PeerIdentity::Exact(peer),
            protocol: u.protocol,
        })
    }

    fn meshed(&self, m: &RawMeshed, td: &TrustDomain) -> Result<MeshedDestination, YamlError> {
        let network = picket_common::Cidr::parse(&m.cidr.value)
            .map_err(|e| self.err(&m.cidr, format!("outbound.meshed.cidr: {e}")))?;
        let identity = if m.identity.value == "any" {
            PeerIdentity::AnyIn(td.clone())
        } else {
            let field = "outbound.meshed.identity";
            PeerIdentity::Exact(self.peer(&m.identity, td, field, " (or \"any\")")?)
        };
        Ok(MeshedDestination {
            network,
            ports: m.ports.clone(),
            identity,
        })
    }

    fn timeouts(&self, t: &RawTimeouts) -> Result<Timeouts, YamlError> {
        let d = |v: &Option<Spanned<String>>, secs: u64, field: &str| {
            self.duration(v.as_ref(), Duration::from_secs(secs), field, Zero::Refused)
        };
        Ok(Timeouts {
            handshake: d(&t.handshake, 10, "timeouts.handshake")?,
            connect: d(&t.connect, 5, "timeouts.connect")?,
            request: d(&t.request, 30, "timeouts.request")?,
            idle: d(&t.idle, 300, "timeouts.idle")?,
            park: self.duration(
                t.park.as_ref(),
                Duration::from_millis(250),
                "timeouts.park",
                Zero::Refused,
            )?,
            stall: d(&t.stall, 30, "timeouts.stall")?,
            drain: d(&t.drain, 30, "timeouts.drain")?,
            detect: d(&t.detect, 1, "timeouts.detect")?,
        })
    }

    /// `jwt:`: fetching and caching key sets, clock skew, how logs name a refused token.
    fn jwt(&self, raw: &RawJwt) -> Result<crate::jwt::JwtSettings, YamlError> {
        use crate::jwt::{JwtSettings, TokenLog};
        let d = JwtSettings::default();
        let clock_skew = self.duration(
            raw.clock_skew.as_ref(),
            d.clock_skew,
            "jwt.clock_skew",
            Zero::Allowed,
        )?;
        if let Some(v) = raw.clock_skew.as_ref()
            && clock_skew > Duration::from_secs(300)
        {
            return Err(self.err(v, "jwt.clock_skew: at most 5m"));
        }
        let d_refused = |v: &Option<Spanned<String>>, default: Duration, field: &str| {
            self.duration(v.as_ref(), default, field, Zero::Refused)
        };
        Ok(JwtSettings {
            trust_roots: raw.trust_roots.clone().unwrap_or(d.trust_roots),
            fetch_timeout: d_refused(&raw.fetch_timeout, d.fetch_timeout, "jwt.fetch_timeout")?,
            refresh_interval: d_refused(
                &raw.refresh_interval,
                d.refresh_interval,
                "jwt.refresh_interval",
            )?,
            refetch_min_interval: d_refused(
                &raw.refetch_min_interval,
                d.refetch_min_interval,
                "jwt.refetch_min_interval",
            )?,
            clock_skew,
            log_token: self.choice(
                raw.log_token.as_ref(),
                d.log_token,
                "jwt.log_token",
                &[
                    ("off", TokenLog::Off),
                    ("hash", TokenLog::Hash),
                    ("sub", TokenLog::Subject),
                ],
            )?,
            max_principal_bytes: self.positive(
                raw.max_principal_bytes.as_ref(),
                d.max_principal_bytes,
                "jwt.max_principal_bytes",
            )?,
        })
    }

    fn limits(&self, l: &RawLimits) -> Result<Limits, YamlError> {
        Ok(Limits {
            max_connections: self.positive(
                l.max_connections.as_ref(),
                10_000,
                "limits.max_connections",
            )?,
            max_requests: self.positive(l.max_requests.as_ref(), 10_000, "limits.max_requests")?,
            max_header_bytes: self.positive(
                l.max_header_bytes.as_ref(),
                64 * 1024,
                "limits.max_header_bytes",
            )?,
        })
    }

    fn policy(&self, raw: &RawPolicy) -> Result<PolicyConfig, YamlError> {
        use picket_policy::DefaultAction;
        let mut load = picket_policy::LoadOptions {
            opaque_tcp_ports: raw.opaque_ports.clone(),
            ..picket_policy::LoadOptions::default()
        };
        load.default_action = self.choice(
            raw.default_action.as_ref(),
            load.default_action,
            "policy.default_action",
            &[
                ("deny", DefaultAction::Deny),
                ("allow", DefaultAction::Allow),
                ("audit-only", DefaultAction::AuditOnly),
            ],
        )?;
        if let Some(ns) = &raw.root_namespace {
            if !picket_common::spiffe::is_name(&ns.value) {
                return Err(self.err(
                    ns,
                    format!(
                        "policy.root_namespace: {:?} is not a namespace (lowercase letters, \
                         digits, '-' and '.', a letter or digit at each end)",
                        ns.value
                    ),
                ));
            }
            load.root_namespace = ns.value.clone();
        }
        Ok(PolicyConfig {
            path: raw.path.clone(),
            load,
            deny_details: raw.deny_details.unwrap_or(true),
        })
    }

    fn http(&self, raw: &RawHttp) -> Result<HttpConfig, YamlError> {
        use crate::forward::{ForwardedMode, HeaderPattern};
        use picket_policy::normalize::EncodedSlashes;
        let defaults = HttpConfig::default();
        let mut path = picket_policy::normalize::PathOptions::default();
        path.encoded_slashes = self.choice(
            raw.encoded_slashes.as_ref(),
            path.encoded_slashes,
            "http.encoded_slashes",
            &[
                ("reject", EncodedSlashes::Reject),
                ("decode", EncodedSlashes::Decode),
                ("keep", EncodedSlashes::Keep),
            ],
        )?;
        let strip_headers = match &raw.strip_headers {
            None => defaults.strip_headers,
            Some(list) => list
                .iter()
                .map(|p| {
                    HeaderPattern::parse(&p.value)
                        .map_err(|e| self.err(p, format!("http.strip_headers: {e}")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(HttpConfig {
            path,
            allow_header_underscores: self.choice(
                raw.header_underscores.as_ref(),
                false,
                "http.header_underscores",
                &[("reject", false), ("allow", true)],
            )?,
            strip_headers,
            forwarded: self.choice(
                raw.forwarded.as_ref(),
                defaults.forwarded,
                "http.forwarded",
                &[
                    ("drop", ForwardedMode::Drop),
                    ("append", ForwardedMode::Append),
                    ("keep", ForwardedMode::Keep),
                ],
            )?,
        })
    }
}
