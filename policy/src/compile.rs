//! Compiled rules: what evaluation walks. Built by the decoder next to the model, so the checks
//! that can fail (CIDRs, ports, patterns) run once, at load, with a position to report.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::decision::{EgressRequest, HttpRequest, PolicyRef, Request, RequestAuth};
use crate::model::{Action, Mode, Policy};
use crate::pattern::{Cidr, HostMatch, StrMatch, namespace_of, strip_spiffe};

/// A policy ready to evaluate, with the model it came from.
#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) model: Policy,
    pub(crate) reference: PolicyRef,
    pub(crate) action: Action,
    pub(crate) mode: Mode,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) source: Arc<str>,
    pub(crate) line: u64,
}

impl CompiledPolicy {
    pub(crate) fn selector(&self) -> &BTreeMap<String, String> {
        &self.model.selector
    }
}

/// One rule: `from` entries OR, `to` entries OR, `when` conditions AND, the three parts AND.
/// An empty list is an absent part.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledRule {
    pub(crate) from: Vec<Peer>,
    pub(crate) to: Vec<Operation>,
    pub(crate) when: Vec<Condition>,
    /// The rule uses hosts, methods, paths or request headers somewhere.
    pub(crate) http_only: bool,
}

/// A request field a rule looked at; names the field that failed in explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Principals,
    NotPrincipals,
    Namespaces,
    NotNamespaces,
    IpBlocks,
    NotIpBlocks,
    RequestPrincipals,
    NotRequestPrincipals,
    Hosts,
    NotHosts,
    Ports,
    NotPorts,
    Methods,
    NotMethods,
    Paths,
    NotPaths,
    Values,
    NotValues,
}

impl Field {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::Principals => "principals",
            Field::NotPrincipals => "notPrincipals",
            Field::Namespaces => "namespaces",
            Field::NotNamespaces => "notNamespaces",
            Field::IpBlocks => "ipBlocks",
            Field::NotIpBlocks => "notIpBlocks",
            Field::RequestPrincipals => "requestPrincipals",
            Field::NotRequestPrincipals => "notRequestPrincipals",
            Field::Hosts => "hosts",
            Field::NotHosts => "notHosts",
            Field::Ports => "ports",
            Field::NotPorts => "notPorts",
            Field::Methods => "methods",
            Field::NotMethods => "notMethods",
            Field::Paths => "paths",
            Field::NotPaths => "notPaths",
            Field::Values => "values",
            Field::NotValues => "notValues",
        }
    }

    pub(crate) fn is_negative(self) -> bool {
        matches!(
            self,
            Field::NotPrincipals
                | Field::NotNamespaces
                | Field::NotIpBlocks
                | Field::NotRequestPrincipals
                | Field::NotHosts
                | Field::NotPorts
                | Field::NotMethods
                | Field::NotPaths
                | Field::NotValues
        )
    }
}

/// The request as rules see it, computed once per evaluation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attrs<'a> {
    pub(crate) principal: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) sni: Option<&'a str>,
    pub(crate) http: Option<&'a HttpRequest<'a>>,
    /// The end user of a validated JWT; HTTP requests only.
    pub(crate) auth: Option<&'a RequestAuth>,
    /// `iss/sub` of the JWT, when it has both.
    pub(crate) request_principal: Option<&'a str>,
    /// An egress connection's destination (egress policies only).
    pub(crate) egress: Option<EgressAttrs<'a>>,
}

/// What egress rules read besides the port: the address dialled and the name asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EgressAttrs<'a> {
    pub(crate) ip: IpAddr,
    /// The name with the port dialled (`api.example.com:443`, `[::1]:80`), as `hosts`
    /// patterns match it; `None` when the client sent no name.
    pub(crate) host: Option<&'a str>,
}

impl<'a> Attrs<'a> {
    #[inline]
    pub(crate) fn new(req: &'a Request<'a>) -> Attrs<'a> {
        let principal = req
            .source_principal
            .map(strip_spiffe)
            .filter(|p| !p.is_empty());
        Attrs {
            principal,
            namespace: principal.and_then(namespace_of),
            ip: req.source_ip.to_canonical(),
            port: req.destination_port,
            sni: req.sni.filter(|s| !s.is_empty()),
            http: req.http.as_ref(),
            auth: req.auth,
            request_principal: req
                .auth
                .and_then(|a| a.principal.as_deref())
                .filter(|p| !p.is_empty()),
            egress: None,
        }
    }

    /// An egress connection as egress rules see it: no principal, the workload's own
    /// connection to `req.ip`, `host` the name with its port (see [`EgressAttrs`]).
    pub(crate) fn egress(req: &'a EgressRequest<'a>, host: Option<&'a str>) -> Attrs<'a> {
        Attrs {
            principal: None,
            namespace: None,
            ip: req.ip.to_canonical(),
            port: req.port,
            sni: req.sni.filter(|s| !s.is_empty()),
            http: None,
            auth: None,
            request_principal: None,
            egress: Some(EgressAttrs {
                ip: req.ip.to_canonical(),
                host,
            }),
        }
    }
}

/// A positive list passes when the attribute is present and matches one pattern; an absent
/// list passes.
#[inline]
fn any_of(patterns: &[StrMatch], value: Option<&str>, field: Field) -> Result<(), Field> {
    if patterns.is_empty() {
        return Ok(());
    }
    match value {
        Some(v) if patterns.iter().any(|p| p.matches(v)) => Ok(()),
        _ => Err(field),
    }
}

/// A `not*` list passes when the attribute is absent or matches no pattern.
#[inline]
fn none_of(patterns: &[StrMatch], value: Option<&str>, field: Field) -> Result<(), Field> {
    match value {
        Some(v) if patterns.iter().any(|p| p.matches(v)) => Err(field),
        _ => Ok(()),
    }
}

/// `from[].source`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Peer {
    pub(crate) principals: Vec<StrMatch>,
    pub(crate) not_principals: Vec<StrMatch>,
    pub(crate) namespaces: Vec<StrMatch>,
    pub(crate) not_namespaces: Vec<StrMatch>,
    pub(crate) ip_blocks: Vec<Cidr>,
    pub(crate) not_ip_blocks: Vec<Cidr>,
    pub(crate) request_principals: Vec<StrMatch>,
    pub(crate) not_request_principals: Vec<StrMatch>,
}

impl Peer {
    /// Every field must pass; the first that does not is returned.
    #[inline]
    pub(crate) fn check(&self, a: &Attrs<'_>) -> Result<(), Field> {
        any_of(&self.principals, a.principal, Field::Principals)?;
        none_of(&self.not_principals, a.principal, Field::NotPrincipals)?;
        any_of(&self.namespaces, a.namespace, Field::Namespaces)?;
        none_of(&self.not_namespaces, a.namespace, Field::NotNamespaces)?;
        if !self.ip_blocks.is_empty() && !self.ip_blocks.iter().any(|c| c.contains(a.ip)) {
            return Err(Field::IpBlocks);
        }
        if self.not_ip_blocks.iter().any(|c| c.contains(a.ip)) {
            return Err(Field::NotIpBlocks);
        }
        // Request principals come from a JWT, which only HTTP requests carry: on a TCP
        // connection they are skipped like the other HTTP-only fields (only DENY and AUDIT
        // rules get here then; see `CompiledRule::matches`).
        if a.http.is_some() {
            any_of(
                &self.request_principals,
                a.request_principal,
                Field::RequestPrincipals,
            )?;
            none_of(
                &self.not_request_principals,
                a.request_principal,
                Field::NotRequestPrincipals,
            )?;
        }
        Ok(())
    }

    /// Whether the source names request principals (HTTP-only).
    pub(crate) fn has_http_fields(&self) -> bool {
        !(self.request_principals.is_empty() && self.not_request_principals.is_empty())
    }

    /// The patterns of one field, for explanations.
    pub(crate) fn patterns(&self, field: Field) -> Vec<String> {
        match field {
            Field::Principals => show(&self.principals),
            Field::NotPrincipals => show(&self.not_principals),
            Field::Namespaces => show(&self.namespaces),
            Field::NotNamespaces => show(&self.not_namespaces),
            Field::IpBlocks => show(&self.ip_blocks),
            Field::NotIpBlocks => show(&self.not_ip_blocks),
            Field::RequestPrincipals => show(&self.request_principals),
            Field::NotRequestPrincipals => show(&self.not_request_principals),
            _ => Vec::new(),
        }
    }
}

/// `to[].operation`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Operation {
    pub(crate) hosts: Vec<HostMatch>,
    pub(crate) not_hosts: Vec<HostMatch>,
    pub(crate) ports: Vec<u16>,
    pub(crate) not_ports: Vec<u16>,
    pub(crate) methods: Vec<StrMatch>,
    pub(crate) not_methods: Vec<StrMatch>,
    pub(crate) paths: Vec<StrMatch>,
    pub(crate) not_paths: Vec<StrMatch>,
}

impl Operation {
    /// Every field must pass. On a TCP connection the HTTP-only fields are skipped: the caller
    /// has already refused ALLOW rules that have them, so only DENY and AUDIT rules get here,
    /// and for them skipping is the more restrictive reading.
    #[inline]
    pub(crate) fn check(&self, a: &Attrs<'_>) -> Result<(), Field> {
        if !self.ports.is_empty() && !self.ports.contains(&a.port) {
            return Err(Field::Ports);
        }
        if self.not_ports.contains(&a.port) {
            return Err(Field::NotPorts);
        }
        if let Some(egress) = a.egress {
            // `hosts` needs a name that matches; `notHosts` fails only on one that matches.
            let hit = |hosts: &[HostMatch]| {
                egress
                    .host
                    .is_some_and(|h| hosts.iter().any(|m| m.matches(h)))
            };
            if !self.hosts.is_empty() && !hit(&self.hosts) {
                return Err(Field::Hosts);
            }
            if hit(&self.not_hosts) {
                return Err(Field::NotHosts);
            }
            return Ok(());
        }
        let Some(http) = a.http else {
            return Ok(());
        };
        any_of(&self.methods, Some(http.method), Field::Methods)?;
        none_of(&self.not_methods, Some(http.method), Field::NotMethods)?;
        any_of(&self.paths, Some(http.path), Field::Paths)?;
        none_of(&self.not_paths, Some(http.path), Field::NotPaths)?;
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.matches(http.host)) {
            return Err(Field::Hosts);
        }
        if self.not_hosts.iter().any(|h| h.matches(http.host)) {
            return Err(Field::NotHosts);
        }
        Ok(())
    }

    pub(crate) fn has_http_fields(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }

    pub(crate) fn patterns(&self, field: Field) -> Vec<String> {
        match field {
            Field::Hosts => show(&self.hosts),
            Field::NotHosts => show(&self.not_hosts),
            Field::Ports => show(&self.ports),
            Field::NotPorts => show(&self.not_ports),
            Field::Methods => show(&self.methods),
            Field::NotMethods => show(&self.not_methods),
            Field::Paths => show(&self.paths),
            Field::NotPaths => show(&self.not_paths),
            _ => Vec::new(),
        }
    }
}

/// What a `when` condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CondKey {
    /// `request.headers[name]`, name lowercased.
    Header(Box<str>),
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationPort,
    /// `destination.ip`: egress policies only (the address the workload dialled).
    DestinationIp,
    Sni,
    /// `request.auth.principal`: the JWT's `iss/sub`.
    RequestPrincipal,
    /// `request.auth.audiences`: the JWT's `aud`, one value or each of a list.
    RequestAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the claim at that path; a list is read element by element.
    RequestClaim(Box<[Box<str>]>),
}

impl fmt::Display for CondKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CondKey::Header(name) => write!(f, "request.headers[{name}]"),
            CondKey::SourceIp => f.write_str("source.ip"),
            CondKey::SourceNamespace => f.write_str("source.namespace"),
            CondKey::SourcePrincipal => f.write_str("source.principal"),
            CondKey::DestinationPort => f.write_str("destination.port"),
            CondKey::DestinationIp => f.write_str("destination.ip"),
            CondKey::Sni => f.write_str("connection.sni"),
            CondKey::RequestPrincipal => f.write_str("request.auth.principal"),
            CondKey::RequestAudiences => f.write_str("request.auth.audiences"),
            CondKey::RequestPresenter => f.write_str("request.auth.presenter"),
            CondKey::RequestClaim(path) => {
                f.write_str("request.auth.claims")?;
                for key in path.iter() {
                    write!(f, "[{key}]")?;
                }
                Ok(())
            }
        }
    }
}

/// The values of a condition, typed by its key. Empty means the list is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CondValues {
    Str(Vec<StrMatch>),
    Ip(Vec<Cidr>),
    Port(Vec<u16>),
}

impl CondValues {
    fn is_empty(&self) -> bool {
        match self {
            CondValues::Str(v) => v.is_empty(),
            CondValues::Ip(v) => v.is_empty(),
            CondValues::Port(v) => v.is_empty(),
        }
    }

    pub(crate) fn show(&self) -> Vec<String> {
        match self {
            CondValues::Str(v) => show(v),
            CondValues::Ip(v) => show(v),
            CondValues::Port(v) => show(v),
        }
    }
}

/// One `when` condition: `values` (any matches) and `notValues` (none matches), both required
/// to pass when present.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub(crate) key: CondKey,
    pub(crate) values: CondValues,
    pub(crate) not_values: CondValues,
}

impl Condition {
    /// Whether the attribute matches `set`, read the way `reading` says; `None` when the
    /// attribute is absent. A header may appear several times and each value may be a
    /// comma-separated list: see [`Reading`].
    #[inline]
    fn hits(&self, set: &CondValues, a: &Attrs<'_>, reading: Reading) -> Option<bool> {
        match (&self.key, set) {
            (CondKey::Header(name), CondValues::Str(patterns)) => {
                let http = a.http?;
                let matches = |v: &str| patterns.iter().any(|p| p.matches(v));
                let mut present = false;
                for (n, v) in http.headers {
                    if !n.eq_ignore_ascii_case(name) {
                        continue;
                    }
                    present = true;
                    match reading {
                        Reading::Any => {
                            if matches(v) || list_elements(v).any(matches) {
                                return Some(true);
                            }
                        }
                        Reading::Every => {
                            if !matches(v) || !list_elements(v).all(matches) {
                                return Some(false);
                            }
                        }
                    }
                }
                present.then_some(reading == Reading::Every)
            }
            (CondKey::SourceIp, CondValues::Ip(blocks)) => {
                Some(blocks.iter().any(|c| c.contains(a.ip)))
            }
            (CondKey::SourceNamespace, CondValues::Str(patterns)) => {
                a.namespace.map(|v| patterns.iter().any(|p| p.matches(v)))
            }
            (CondKey::SourcePrincipal, CondValues::Str(patterns)) => {
                a.principal.map(|v| patterns.iter().any(|p| p.matches(v)))
            }
            (CondKey::DestinationPort, CondValues::Port(ports)) => Some(ports.contains(&a.port)),
            (CondKey::DestinationIp, CondValues::Ip(blocks)) => {
                a.egress.map(|e| blocks.iter().any(|c| c.contains(e.ip)))
            }
            (CondKey::Sni, CondValues::Str(patterns)) => a
                .sni
                .map(|v| patterns.iter().any(|p| p.matches_ignore_case(v))),
            (CondKey::RequestPrincipal, CondValues::Str(patterns)) => a
                .request_principal
                .map(|v| patterns.iter().any(|p| p.matches(v))),
            (CondKey::RequestPresenter, CondValues::Str(patterns)) => a
                .auth
                .and_then(|x| x.presenter.as_deref())
                .map(|v| patterns.iter().any(|p| p.matches(v))),
            (CondKey::RequestAudiences, CondValues::Str(patterns)) => {
                let auth = a.auth?;
                if auth.audiences.is_empty() {
                    return None;
                }
                Some(
                    auth.audiences
                        .iter()
                        .any(|v| patterns.iter().any(|p| p.matches(v))),
                )
            }
            (CondKey::RequestClaim(path), CondValues::Str(patterns)) => {
                let readings = claim_readings(a.auth?.claim(path)?);
                if readings.is_empty() {
                    return None;
                }
                Some(
                    readings
                        .iter()
                        .any(|v| patterns.iter().any(|p| p.matches(v))),
                )
            }
            // The decoder never pairs a key with values of another type.
            _ => None,
        }
    }

    /// `values` needs the attribute present and matching; `notValues` fails when it matches (an
    /// absent attribute passes it). A header is read so that the rule fails safe for its
    /// `action`: a DENY or AUDIT rule's `values` match when any reading matches (and its
    /// `notValues` fail only when every reading matches); an ALLOW rule's `values` match only
    /// when every reading matches (and its `notValues` fail when any reading matches).
    #[inline]
    pub(crate) fn check(&self, a: &Attrs<'_>, action: Action) -> Result<(), Field> {
        if a.http.is_none() && self.is_http_only() {
            // Only DENY and AUDIT rules reach here on TCP: skipping is the restrictive reading.
            return Ok(());
        }
        let (values, not_values) = if action == Action::Allow {
            (Reading::Every, Reading::Any)
        } else {
            (Reading::Any, Reading::Every)
        };
        if !self.values.is_empty() && self.hits(&self.values, a, values) != Some(true) {
            return Err(Field::Values);
        }
        if !self.not_values.is_empty() && self.hits(&self.not_values, a, not_values) == Some(true) {
            return Err(Field::NotValues);
        }
        Ok(())
    }

    pub(crate) fn is_http_only(&self) -> bool {
        matches!(
            self.key,
            CondKey::Header(_)
                | CondKey::RequestPrincipal
                | CondKey::RequestAudiences
                | CondKey::RequestPresenter
                | CondKey::RequestClaim(_)
        )
    }

    /// Whether the condition can only match a request that carries a validated JWT.
    pub(crate) fn requires_request_auth(&self) -> bool {
        !self.values.is_empty()
            && matches!(
                self.key,
                CondKey::RequestPrincipal
                    | CondKey::RequestAudiences
                    | CondKey::RequestPresenter
                    | CondKey::RequestClaim(_)
            )
    }

    /// The request's value(s) for this key, for explanations.
    pub(crate) fn request_values(&self, a: &Attrs<'_>) -> Vec<String> {
        match &self.key {
            CondKey::Header(name) => a
                .http
                .map(|h| {
                    h.headers
                        .iter()
                        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| (*v).to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            CondKey::SourceIp => vec![a.ip.to_string()],
            CondKey::SourceNamespace => a.namespace.map(str::to_owned).into_iter().collect(),
            CondKey::SourcePrincipal => a.principal.map(str::to_owned).into_iter().collect(),
            CondKey::DestinationPort => vec![a.port.to_string()],
            CondKey::DestinationIp => a.egress.map(|e| e.ip.to_string()).into_iter().collect(),
            CondKey::Sni => a.sni.map(str::to_owned).into_iter().collect(),
            CondKey::RequestPrincipal => {
                a.request_principal.map(str::to_owned).into_iter().collect()
            }
            CondKey::RequestAudiences => a.auth.map(|x| x.audiences.clone()).unwrap_or_default(),
            CondKey::RequestPresenter => a
                .auth
                .and_then(|x| x.presenter.clone())
                .into_iter()
                .collect(),
            CondKey::RequestClaim(path) => a
                .auth
                .and_then(|x| x.claim(path))
                .map(claim_readings)
                .unwrap_or_default(),
        }
    }
}

/// How a claim is matched: a string as itself, a number or boolean as its JSON text, a list
/// element by element (strings, numbers and booleans in it); objects and null give nothing.
pub(crate) fn claim_readings(value: &serde_json::Value) -> Vec<String> {
    fn scalar(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        serde_json::Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// How a header's values are read against a pattern list. A header may appear several times,
/// and many frameworks split a value on commas (`X-Role: user, admin` read as two roles), so a
/// header has several readings: each occurrence's whole value, and each non-empty element of
/// its comma-separated list (trimmed of spaces and tabs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Matches when any reading matches.
    Any,
    /// Matches when every reading matches.
    Every,
}

/// The non-empty elements of a comma-separated field value; nothing for a value without a
/// comma (its only element is the whole value, already read).
fn list_elements(v: &str) -> impl Iterator<Item = &str> {
    let listed = v.contains(',');
    v.split(',')
        .filter(move |_| listed)
        .map(|e| e.trim_matches([' ', '\t']))
        .filter(|e| !e.is_empty())
}

impl CompiledRule {
    /// Whether the rule matches. On a TCP connection (no HTTP request) an ALLOW rule with
    /// HTTP-only fields never matches; DENY and AUDIT rules match on their other fields.
    #[inline]
    pub(crate) fn matches(&self, a: &Attrs<'_>, action: Action) -> bool {
        if a.http.is_none() && self.http_only && action == Action::Allow {
            return false;
        }
        (self.to.is_empty() || self.to.iter().any(|o| o.check(a).is_ok()))
            && (self.from.is_empty() || self.from.iter().any(|p| p.check(a).is_ok()))
            && self.when.iter().all(|c| c.check(a, action).is_ok())
    }

    /// The attribute values one of which a request must have for this rule to match, used to
    /// index rules. The most selective known requirement wins.
    pub(crate) fn index_key(&self) -> IndexKey {
        if let Some(keys) = exact_requirement(&self.from, |p| &p.principals) {
            return IndexKey::Principals(keys);
        }
        if let Some(keys) = exact_requirement(&self.from, |p| &p.namespaces) {
            return IndexKey::Namespaces(keys);
        }
        if !self.to.is_empty() && self.to.iter().all(|o| !o.ports.is_empty()) {
            let mut ports: Vec<u16> = self.to.iter().flat_map(|o| o.ports.clone()).collect();
            ports.sort_unstable();
            ports.dedup();
            return IndexKey::Ports(ports);
        }
        IndexKey::Any
    }

    /// The rule cannot match a request without a principal.
    pub(crate) fn requires_principal(&self) -> bool {
        let from = !self.from.is_empty()
            && self
                .from
                .iter()
                .all(|p| !p.principals.is_empty() || !p.namespaces.is_empty());
        let when = self.when.iter().any(|c| {
            matches!(c.key, CondKey::SourcePrincipal | CondKey::SourceNamespace)
                && !c.values.is_empty()
        });
        from || when
    }

    /// The rule cannot match a request without a validated JWT.
    pub(crate) fn requires_request_auth(&self) -> bool {
        let from =
            !self.from.is_empty() && self.from.iter().all(|p| !p.request_principals.is_empty());
        from || self.when.iter().any(Condition::requires_request_auth)
    }
}

/// The union of exact values when every `from` entry lists only exact values in `field`.
fn exact_requirement(
    from: &[Peer],
    field: impl Fn(&Peer) -> &Vec<StrMatch>,
) -> Option<Vec<Box<str>>> {
    if from.is_empty() {
        return None;
    }
    let mut keys = Vec::new();
    for peer in from {
        let patterns = field(peer);
        if patterns.is_empty() {
            return None;
        }
        for p in patterns {
            keys.push(Box::<str>::from(p.exact()?));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

/// Where a rule is filed in a workload's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IndexKey {
    Principals(Vec<Box<str>>),
    Namespaces(Vec<Box<str>>),
    Ports(Vec<u16>),
    Any,
}

fn show<T: fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}
