//! Egress: transparent connections to destinations outside the mesh.
//!
//! ```text
//! original destination not meshed, not known to the discovery source
//!   -> a cloud metadata address with outbound.metadata: block -> refused, alerted
//!   -> the name the client asked for, peeked (never consumed): the SNI of a TLS ClientHello
//!      or the Host of a plaintext HTTP/1 request, within EGRESS_PEEK_BYTES and
//!      EGRESS_PEEK_WAIT; nothing sent in time (server-speaks-first protocols) is no name
//!   -> the egress decision: egress policies (`spec.direction: egress`) of this workload, the
//!      default being `outbound.passthrough` (one decision record, as inbound)
//!   -> allowed: plain TCP to the original destination, flow records open/interim/end with
//!      the address, port, name and bytes; denied: closed, one flow record with the decision
//! ```
//!
//! The parsers ([`client_hello_sni`], [`http1_host`]) are strict and total: any malformed or
//! unexpected byte is "no name", never an error for the connection (the bytes go on unchanged
//! either way). They are fuzzed by `proxy/fuzz` `egress_name`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use picket_policy::{DefaultAction, EgressRequest};

use super::Outbound;
use super::balance::{Lease, Outcome};
use crate::authz::{self, PolicyStore};
use crate::direction::Direction;
use crate::net::IdleTimeout;
use crate::pipeline::{Endpoints, Enforced, TcpFlow};

/// The most bytes the name is looked for in: one TLS record of the largest size (16 KiB of
/// plaintext and its 5-byte header), which also bounds a plaintext HTTP/1 request head.
pub const EGRESS_PEEK_BYTES: usize = 16_384 + 5;

/// The longest the sidecar waits for the client's first bytes before a passthrough connection
/// goes on without a name (less when `timeouts.detect` is shorter). A client that speaks
/// first sends its ClientHello or request head as soon as its connection is accepted; one that
/// waits for the server (SMTP, MySQL) is delayed this long once, or not at all when its port
/// is listed in `outbound.opaque_ports`.
pub const EGRESS_PEEK_WAIT: Duration = Duration::from_millis(200);

/// Where a name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// The `server_name` extension of a TLS ClientHello.
    Sni,
    /// The `Host` header of a plaintext HTTP/1 request.
    Host,
}

/// The name a client asked for: lowercase, without port or trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerName {
    /// SNI or Host.
    pub source: NameSource,
    /// The host name (or an IP literal for a Host header that names one).
    pub name: String,
}

/// What the first bytes of an egress connection told of where its client goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    /// The name the client asked for, when one was read.
    pub name: Option<ServerName>,
    /// Its ClientHello offered Encrypted ClientHello, whether its outer ClientHello names a
    /// server or not: the name it really asked for is encrypted, and `name` (when there is
    /// one) is the outer, public name. Never for a `Host` header.
    pub ech: bool,
}

/// What a parser made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The name. `ech`: the ClientHello offered Encrypted ClientHello (an outer ClientHello
    /// with an `encrypted_client_hello` extension), so `name` is its outer, public name and
    /// the name the client really asked for is encrypted; always `false` for a `Host`.
    Name {
        /// The host name (or an IP literal for a Host header that names one).
        name: String,
        /// Whether the ClientHello offered ECH.
        ech: bool,
    },
    /// A well-formed ClientHello offering Encrypted ClientHello whose outer ClientHello has no
    /// `server_name` extension: no name to read, but the ECH offer is seen all the same.
    EchWithoutName,
    /// There is no name to read in these bytes (not TLS or HTTP/1, no extension, malformed).
    NoName,
    /// The bytes so far are a valid beginning; more are needed.
    NeedMore,
}

impl Parsed {
    /// A name without ECH.
    fn plain(name: String) -> Parsed {
        Parsed::Name { name, ech: false }
    }
}

/// A big-endian reader that fails on any read past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?])))
    }
    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(
            (usize::from(*b.first()?) << 16)
                | (usize::from(*b.get(1)?) << 8)
                | usize::from(*b.get(2)?),
        )
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vector(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let n = match len_bytes {
            1 => usize::from(self.u8()?),
            _ => self.u16()?,
        };
        self.take(n).map(Reader)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The SNI host name of a TLS ClientHello at the start of `buf` (RFC 8446 sections 4.1.2,
/// 4.2 and 5.1, RFC 6066 section 3), and whether it offers Encrypted ClientHello. The
/// ClientHello may be split across several handshake records (RFC 8446 section 5.1 allows a
/// handshake message to be fragmented): their fragments are joined until the message is
/// whole. Any other record type between them, an empty or oversized record, or a malformed
/// message has no name.
pub fn client_hello_sni(buf: &[u8]) -> Parsed {
    let mut r = Reader(buf);
    // The handshake bytes of the records read so far.
    let mut message: Vec<u8> = Vec::new();
    loop {
        let rest = r.0;
        let header = (r.u8(), r.u8(), r.u8(), r.u16());
        let (Some(kind), Some(major), Some(minor), Some(len)) = header else {
            // Too short for a record header: a valid beginning only if what is there fits one.
            return match rest {
                [] | [0x16] | [0x16, 0x03] => Parsed::NeedMore,
                [0x16, 0x03, minor, ..] if *minor <= 0x04 => Parsed::NeedMore,
                _ => Parsed::NoName,
            };
        };
        if kind != 0x16 || major != 0x03 || minor > 0x04 || len == 0 || len > 16_384 {
            return Parsed::NoName;
        }
        let Some(fragment) = r.take(len) else {
            return Parsed::NeedMore;
        };
        message.extend_from_slice(fragment);
        let mut m = Reader(&message);
        let (Some(kind), Some(body_len)) = (m.u8(), m.u24()) else {
            continue;
        };
        if kind != 0x01 {
            return Parsed::NoName;
        }
        let Some(body) = m.take(body_len) else {
            continue;
        };
        return match hello_sni(body) {
            Some((Some(name), ech)) => Parsed::Name { name, ech },
            Some((None, true)) => Parsed::EchWithoutName,
            Some((None, false)) | None => Parsed::NoName,
        };
    }
}

/// The `encrypted_client_hello` extension (draft-ietf-tls-esni, RFC 9849).
const EXT_ECH: usize = 0xfe0d;

/// Whether the data of an `encrypted_client_hello` extension is a well-formed outer one:
/// type `outer` (0), cipher suite, config id, `enc` and a non-empty payload, nothing after.
/// An `inner` (1) one belongs inside the encrypted payload, never on the wire.
fn ech_outer(mut data: Reader<'_>) -> Option<()> {
    if data.u8()? != 0 {
        return None;
    }
    let _cipher_suite = data.take(4)?;
    let _config_id = data.u8()?;
    let _enc = data.vector(2)?;
    let payload = data.vector(2)?;
    (!payload.is_empty() && data.is_empty()).then_some(())
}

/// The SNI of the ClientHello whose body is `body`, and whether it offers ECH: `None` when
/// malformed, `Some((None, _))` when well formed without a host name.
fn hello_sni(body: &[u8]) -> Option<(Option<String>, bool)> {
    let mut body = Reader(body);
    let _legacy_version = body.take(2)?;
    let _random = body.take(32)?;
    let session_id = body.vector(1)?;
    let suites = body.vector(2)?;
    let compression = body.vector(1)?;
    if session_id.0.len() > 32
        || suites.0.is_empty()
        || suites.0.len() % 2 != 0
        || compression.0.is_empty()
    {
        return None;
    }
    if body.is_empty() {
        return Some((None, false));
    }
    let mut extensions = body.vector(2)?;
    if !body.is_empty() {
        return None;
    }
    let mut name = None;
    let (mut seen_sni, mut ech) = (false, false);
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector(2)?;
        // RFC 8446 section 4.2: at most one extension of each type.
        match kind {
            0 if seen_sni => return None,
            0 => {
                seen_sni = true;
                name = server_name_list(data)?;
            }
            EXT_ECH if ech => return None,
            EXT_ECH => {
                ech_outer(data)?;
                ech = true;
            }
            _ => {}
        }
    }
    Some((name, ech))
}

/// The first `host_name` of a `server_name` extension's list (RFC 6066 section 3).
fn server_name_list(mut data: Reader<'_>) -> Option<Option<String>> {
    let mut list = data.vector(2)?;
    if !data.is_empty() || list.is_empty() {
        return None;
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let value = list.vector(2)?;
        if kind == 0 {
            // "The ServerNameList MUST NOT contain more than one name of the same name_type."
            if name.is_some() {
                return None;
            }
            // A name the shared rule refuses leaves the ClientHello without one.
            name = Some(picket_policy::egress_name::sni_name(value.0).ok()?);
        }
    }
    Some(name)
}

/// Headers read from a request head at most; a head with more has no name.
const MAX_HEADERS: usize = 128;

/// The `Host` of a plaintext HTTP/1 request head at the start of `buf`: exactly one `Host`
/// header, naming a host (name or IP literal), returned without port, lowercased. A head
/// that is not complete in `buf` needs more bytes; anything that is not an HTTP/1 request
/// has no name.
pub fn http1_host(buf: &[u8]) -> Parsed {
    match crate::net::classify(buf) {
        None => return Parsed::NeedMore,
        Some(crate::net::Detected::Opaque) => return Parsed::NoName,
        Some(crate::net::Detected::Http) if buf.starts_with(b"PRI * HTTP/2.0") => {
            // h2c with prior knowledge: the authority is HPACK-coded, not read here.
            return Parsed::NoName;
        }
        Some(crate::net::Detected::Http) => {}
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Parsed::NeedMore,
        Err(_) => return Parsed::NoName,
    }
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Parsed::NoName;
    };
    // The one rule `picket policy explain --host` checks with.
    match picket_policy::egress_name::host_header_name(host.value) {
        Ok(name) => Parsed::plain(name),
        Err(_) => Parsed::NoName,
    }
}

/// The name in `buf`, read as a TLS ClientHello when it starts like a TLS record, else as an
/// HTTP/1 request head.
pub fn server_name(buf: &[u8]) -> (Parsed, NameSource) {
    match buf.first() {
        Some(0x16) | None => (client_hello_sni(buf), NameSource::Sni),
        Some(_) => (http1_host(buf), NameSource::Host),
    }
}

/// Peeks at the first bytes of `tcp` (never consuming them) for the name the client asked
/// for and whether it offered ECH: at most [`EGRESS_PEEK_BYTES`] and `wait`. Nothing is seen
/// when it sent nothing in time, closed, or sent something without a name or ECH offer.
pub async fn peek_name(tcp: &TcpStream, wait: Duration) -> Asked {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; EGRESS_PEEK_BYTES];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Asked::default(),
        };
        let (parsed, source) = server_name(buf.get(..n).unwrap_or_default());
        match parsed {
            Parsed::Name { name, ech } => {
                return Asked {
                    name: Some(ServerName { source, name }),
                    ech,
                };
            }
            Parsed::EchWithoutName => {
                return Asked {
                    name: None,
                    ech: true,
                };
            }
            Parsed::NoName => return Asked::default(),
            Parsed::NeedMore if n >= buf.len() => return Asked::default(),
            Parsed::NeedMore => {}
        }
        // A partial message: peek returns at once while bytes are buffered, so wait a little
        // for the rest instead of spinning.
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(2)))
            .await
            .is_err()
        {
            return Asked::default();
        }
    }
}

impl Outbound {
    /// A transparent connection to a destination outside the mesh (see the module
    /// documentation): refused when it is a blocked cloud metadata address, or when the egress
    /// decision denies it; else passed through, with the name the client asked for and the
    /// decision in its records.
    pub(super) async fn egress(&self, tcp: TcpStream, orig: SocketAddr) {
        let Some(t) = &self.transparent else { return };
        if t.blocked.contains(&orig.ip()) {
            // The detectors alert (critical); the connection goes no further.
            self.telemetry.outbound_destination(&orig.ip().to_string());
            self.metrics
                .connection(Direction::Outbound, "refused_metadata");
            tracing::warn!(destination = %orig, "outbound connection refused: a cloud metadata address (outbound.metadata: block)");
            return;
        }
        let policies = self.policy.as_ref().filter(|p| p.has_egress_policies());
        if !t.passthrough && policies.is_none() {
            self.metrics
                .connection(Direction::Outbound, "refused_egress");
            tracing::warn!(destination = %orig, "outbound connection refused: destination is outside the mesh and passthrough is deny");
            return;
        }
        // The name is looked for when something will use it: a record or a decision. A port
        // declared opaque is never waited on (server-speaks-first protocols).
        let wanted = self.telemetry.is_enabled() || policies.is_some();
        let asked = if wanted && !t.opaque_ports.contains(&orig.port()) {
            peek_name(&tcp, EGRESS_PEEK_WAIT.min(self.timeouts.detect)).await
        } else {
            Asked::default()
        };
        if let Some(n) = &asked.name
            && n.name != orig.ip().to_string()
        {
            // A metadata service reached by name (`metadata.google.internal`) alerts too.
            self.telemetry.outbound_destination(&n.name);
        }
        let enforced =
            policies.map(|store| self.decide_egress(store, orig, asked.name.as_ref(), t));
        match enforced {
            Some(e) if !e.allowed() => {
                self.metrics
                    .connection(Direction::Outbound, "refused_egress");
                let mut flow = self.egress_flow(&tcp, orig, orig, asked);
                flow.enforced = Some(e);
                // Never opened: one record with the decision, which the detectors see.
                flow.finish(&self.metrics, &self.telemetry);
            }
            enforced => self.passthrough(tcp, orig, None, asked, enforced).await,
        }
    }

    /// The egress decision for a connection to `orig` asking for `name`, logged as every
    /// decision is (a denial with a fresh request id; an allow when a dry-run policy would
    /// have decided otherwise).
    fn decide_egress(
        &self,
        store: &PolicyStore,
        orig: SocketAddr,
        name: Option<&ServerName>,
        t: &super::Transparent,
    ) -> Enforced {
        let req = EgressRequest {
            ip: orig.ip(),
            port: orig.port(),
            name: name.map(|n| n.name.as_str()),
            sni: name
                .filter(|n| n.source == NameSource::Sni)
                .map(|n| n.name.as_str()),
        };
        let default = if t.passthrough {
            DefaultAction::Allow
        } else {
            DefaultAction::Deny
        };
        let decision = store.decide_egress(&req, default);
        let denied = !decision.is_allowed();
        let request_id = denied.then(authz::request_id);
        if denied || !decision.shadows.is_empty() || decision.would_verdict != decision.verdict {
            let what = match name {
                Some(n) => format!("egress connection to {orig} ({})", n.name),
                None => format!("egress connection to {orig} (no name seen)"),
            };
            authz::log_decision(&decision, &self.own_identity, &what, request_id.as_deref());
        }
        Enforced {
            decision,
            request_id,
        }
    }

    /// The flow of an egress connection from `tcp` to `orig` (carried to `target`), with the
    /// name its client asked for and its ECH offer.
    fn egress_flow(
        &self,
        tcp: &TcpStream,
        orig: SocketAddr,
        target: SocketAddr,
        asked: Asked,
    ) -> TcpFlow<'_> {
        // Recorded like a meshed flow, with no destination identity.
        let mut flow = TcpFlow::new(
            Direction::Outbound,
            Endpoints {
                source_identity: Some(self.own_identity.as_str().into()),
                source_address: tcp.peer_addr().ok(),
                destination_address: Some(orig),
                destination_port: Some(orig.port()),
                endpoint: (target != orig).then_some(target),
                ..Endpoints::default()
            },
        );
        flow.egress = true;
        flow.ech = asked.ech;
        match asked.name {
            Some(ServerName {
                source: NameSource::Sni,
                name,
            }) => flow.sni = Some(name),
            Some(ServerName {
                source: NameSource::Host,
                name,
            }) => flow.host = Some(name),
            None => {}
        }
        flow
    }

    /// Plain TCP to `orig`, or to the endpoint of `lease` (one without a sidecar). `asked` is
    /// what the client's first bytes told (name, ECH offer), when they were read; `enforced`
    /// the egress decision, when egress policies decided the connection.
    pub(super) async fn passthrough(
        &self,
        tcp: TcpStream,
        orig: SocketAddr,
        lease: Option<Lease>,
        asked: Asked,
        enforced: Option<Enforced>,
    ) {
        // Cloud metadata endpoints and other outside destinations feed the detectors.
        self.telemetry.outbound_destination(&orig.ip().to_string());
        let lease = lease.map(Lease::measuring_setup);
        let target = lease.as_ref().map_or(orig, |l| l.endpoint.addr);
        let connect = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(target)).await;
        let mut upstream = match connect {
            Ok(Ok(s)) => {
                if let Some(l) = lease {
                    l.finish(Outcome::Answered);
                }
                s
            }
            Ok(Err(e)) => {
                if let Some(l) = lease {
                    l.finish(Outcome::Failed);
                }
                tracing::info!(destination = %orig, target = %target, error = %e, "passthrough connect failed");
                return;
            }
            Err(_) => {
                if let Some(l) = lease {
                    l.finish(Outcome::Failed);
                }
                tracing::info!(destination = %orig, target = %target, "passthrough connect timed out");
                return;
            }
        };
        self.metrics.connection(Direction::Outbound, "passthrough");
        let mut flow = self.egress_flow(&tcp, orig, target, asked);
        flow.enforced = enforced;
        flow.open_egress(&self.telemetry);
        let mut client = IdleTimeout::new(tcp, self.timeouts.idle);
        if let Err(e) = flow
            .splice(&mut client, &mut upstream, &self.telemetry)
            .await
        {
            tracing::debug!(destination = %orig, error = %e, "passthrough connection ended");
        }
        flow.finish(&self.metrics, &self.telemetry);
    }
}

#[cfg(test)]
mod tests;
