//! End-user request authentication at the inbound sidecar: the `RequestAuthentication`
//! documents that select this workload, turned into an [`Authenticator`] at each policy
//! (re)load.
//!
//! Per request ([`Authenticator::authenticate`], a step of the one pipeline before the
//! policy decision), with Istio's semantics:
//!
//! - no token at any location a rule names: the request goes on unauthenticated (policy
//!   decides what it may do; `requestPrincipals` then match nothing);
//! - one token: its `iss` picks the rule (among those that read the location it was found
//!   at), and it must verify against that issuer's keys (signature, `exp`/`nbf` with the
//!   skew, `iss`, `aud`); any failure is 401 with `WWW-Authenticate: Bearer`;
//! - two different tokens: 401 (which one would policy mean?).
//!
//! After an allowing decision ([`Authenticator::prepare_forward`]) the headers the rules
//! output are removed from what the client sent (always, token or not, so a client cannot
//! forge them), the validated rule's outputs are set, and the token is removed unless the
//! rule forwards it.
//!
//! Tokens are never logged: a log line names a token by a SHA-256 prefix, its `sub`, or not
//! at all (`jwt.log_token`).

pub mod cache;
pub mod jwks;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;
use picket_policy::{JwksSource, JwtRule, RequestAuth, RequestAuthentication};

pub use jwks::{JwksCache, JwksRegistry};
pub use token::{KeySet, TokenError};

/// How a log line may name a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenLog {
    /// Not at all.
    Off,
    /// The first 16 hex digits of the token's SHA-256 (the default).
    #[default]
    Hash,
    /// The token's `sub` claim (unverified when the token was refused).
    Subject,
}

/// The sidecar's `jwt:` settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// PEM roots JWKS servers are verified against.
    pub trust_roots: std::path::PathBuf,
    /// The bound on one JWKS fetch (connect, TLS, answer).
    pub fetch_timeout: Duration,
    /// How often keys are fetched again.
    pub refresh_interval: Duration,
    /// The least time between two early fetches asked for by unknown `kid`s.
    pub refetch_min_interval: Duration,
    /// The clock skew allowed on `exp` and `nbf`.
    pub clock_skew: Duration,
    /// How logs name tokens.
    pub log_token: TokenLog,
    /// The longest request principal written into a flow record (longer ones are cut).
    pub max_principal_bytes: usize,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            trust_roots: std::path::PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            fetch_timeout: Duration::from_secs(5),
            refresh_interval: Duration::from_secs(600),
            refetch_min_interval: Duration::from_secs(30),
            clock_skew: Duration::from_secs(30),
            log_token: TokenLog::Hash,
            max_principal_bytes: 256,
        }
    }
}

/// Where a rule's keys are.
#[derive(Debug, Clone)]
enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<JwksCache>),
}

/// One issuer's rule, ready for requests.
#[derive(Debug)]
struct IssuerRule {
    rule: JwtRule,
    /// `namespace/name` of the document.
    document: String,
    keys: Keys,
    headers: Vec<(HeaderName, String)>,
    params: Vec<String>,
    outputs: Vec<(HeaderName, Vec<Box<str>>)>,
    payload_header: Option<HeaderName>,
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Header(HeaderName),
    Param(String),
}

/// A request whose token validated.
#[derive(Debug)]
pub struct Authenticated {
    /// What policy sees.
    pub auth: RequestAuth,
    rule: usize,
    location: Location,
    /// The token's payload segment (base64url), for `outputPayloadToHeader`.
    payload: String,
}

/// The request authentication of one workload.
#[derive(Debug)]
pub struct Authenticator {
    rules: Vec<IssuerRule>,
    /// Every header a rule outputs: removed from every request before the app.
    outputs: Vec<HeaderName>,
    settings: Arc<JwtSettings>,
    /// Tokens validated before ([`cache`]): emptied with each policy load, which builds a new
    /// authenticator.
    validated: cache::TokenCache,
}

/// Why the `RequestAuthentication` documents cannot be put in force.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthnError(String);

impl Authenticator {
    /// An authenticator with no rules: every request is unauthenticated.
    pub fn none(settings: Arc<JwtSettings>) -> Self {
        Self {
            rules: Vec::new(),
            outputs: Vec::new(),
            settings,
            validated: cache::TokenCache::default(),
        }
    }

    /// The authenticator for the documents that select a workload. Inline key sets are read
    /// here (an unusable one is an error, so a reload with it keeps the previous policy), and
    /// remote ones are taken from `registry`. Two documents with a rule for the same issuer
    /// are an error: a token is matched to its rule by issuer.
    pub fn build(
        documents: &[Arc<RequestAuthentication>],
        registry: Result<&JwksRegistry, &str>,
        settings: Arc<JwtSettings>,
    ) -> Result<Self, AuthnError> {
        let mut rules: Vec<IssuerRule> = Vec::new();
        let mut outputs: Vec<HeaderName> = Vec::new();
        for doc in documents {
            let where_ = format!(
                "RequestAuthentication {} ({}:{})",
                doc.reference(),
                doc.source,
                doc.line
            );
            for rule in &doc.rules {
                if let Some(other) = rules.iter().find(|r| r.rule.issuer == rule.issuer) {
                    return Err(AuthnError(format!(
                        "{where_}: issuer `{}` also has a rule in RequestAuthentication {}, and \
                         both apply to this workload; a token is matched to its rule by issuer",
                        rule.issuer, other.document
                    )));
                }
                let keys = rule_keys(rule, registry, &where_)?;
                let name = |h: &str| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|e| AuthnError(format!("{where_}: header `{h}`: {e}")))
                };
                let headers = rule
                    .token_headers()
                    .iter()
                    .map(|h| Ok((name(&h.name)?, h.prefix.clone())))
                    .collect::<Result<Vec<_>, AuthnError>>()?;
                let claim_outputs = rule
                    .output_claim_to_headers
                    .iter()
                    .map(|c| Ok((name(&c.header)?, c.path())))
                    .collect::<Result<Vec<_>, AuthnError>>()?;
                let payload_header = rule
                    .output_payload_to_header
                    .as_deref()
                    .map(name)
                    .transpose()?;
                outputs.extend(claim_outputs.iter().map(|(h, _)| h.clone()));
                outputs.extend(payload_header.iter().cloned());
                rules.push(IssuerRule {
                    rule: rule.clone(),
                    document: doc.reference(),
                    keys,
                    headers,
                    params: rule.token_params(),
                    outputs: claim_outputs,
                    payload_header,
                });
            }
        }
        outputs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        outputs.dedup();
        Ok(Self {
            rules,
            outputs,
            settings,
            validated: cache::TokenCache::default(),
        })
    }

    /// Whether any rule applies to the workload.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The settings in force.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Finds and validates the request's token: `Ok(None)` when there is none, the
    /// validated claims, or why the token is refused (answer 401).
    pub fn authenticate(
        &self,
        parts: &http::request::Parts,
    ) -> Result<Option<Authenticated>, Refused> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let found = self.find_tokens(parts);
        let Some((token, _)) = found.first() else {
            return Ok(None);
        };
        if found.iter().any(|(t, _)| t != token) {
            return Err(self.refused(token, TokenError::MultipleTokens));
        }
        let head = token::peek(token).map_err(|e| self.refused(token, e))?;
        let issuer = head.issuer.as_deref().unwrap_or("");
        // The rule for this issuer, provided it reads one of the places the token was at.
        let Some((index, rule, location)) = self.rules.iter().enumerate().find_map(|(i, r)| {
            if r.rule.issuer != issuer {
                return None;
            }
            found
                .iter()
                .map(|(_, loc)| loc)
                .find(|loc| r.reads(loc))
                .map(|loc| (i, r, loc.clone()))
        }) else {
            return Err(self.refused(token, TokenError::UnknownIssuer));
        };
        let keys = match &rule.keys {
            Keys::Inline(k) => Some(Arc::clone(k)),
            Keys::Remote(cache) => cache.keys(),
        };
        let Some(keys) = keys else {
            return Err(self.refused(token, TokenError::NoKeys));
        };
        if let (Some(kid), Keys::Remote(cache)) = (&head.kid, &rule.keys)
            && !keys.has_kid(kid)
        {
            let asked = cache.refetch_soon();
            tracing::info!(
                jwks = cache.uri(),
                refetch = asked,
                "token names an unknown key id"
            );
        }
        let skew = self.settings.clock_skew.as_secs();
        let validated = match self.validated.get(token, index, &keys, cache::now()) {
            Some(kept) => kept,
            None => {
                let requirements = token::Requirements {
                    issuer: &rule.rule.issuer,
                    audiences: &rule.rule.audiences,
                    skew_seconds: skew,
                };
                let claims = token::verify(token, &head, &keys, &requirements)
                    .map_err(|e| self.refused(token, e))?;
                let validated = cache::Validated {
                    auth: RequestAuth::from_claims(claims),
                    payload: token.split('.').nth(1).unwrap_or("").to_owned(),
                };
                self.validated.put(token, index, &keys, &validated, skew);
                validated
            }
        };
        Ok(Some(Authenticated {
            auth: validated.auth,
            rule: index,
            location,
            payload: validated.payload,
        }))
    }

    /// How many validated tokens are kept ([`cache`]).
    pub fn cached_tokens(&self) -> usize {
        self.validated.len()
    }

    /// The tokens at every location any rule reads, with where each was found.
    fn find_tokens(&self, parts: &http::request::Parts) -> Vec<(String, Location)> {
        let mut found: Vec<(String, Location)> = Vec::new();
        let mut push = |token: &str, loc: Location| {
            if !found.iter().any(|(t, l)| t == token && *l == loc) {
                found.push((token.to_owned(), loc));
            }
        };
        for rule in &self.rules {
            for (name, prefix) in &rule.headers {
                for value in parts.headers.get_all(name) {
                    let Ok(text) = value.to_str() else {
                        // Not visible ASCII: certainly not a token, but not nothing either.
                        push("\u{fffd}", Location::Header(name.clone()));
                        continue;
                    };
                    let token = match text.get(..prefix.len()) {
                        Some(p) if p.eq_ignore_ascii_case(prefix) => &text[prefix.len()..],
                        _ => continue,
                    };
                    push(token.trim(), Location::Header(name.clone()));
                }
            }
            if let Some(query) = parts.uri.query() {
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if rule.params.iter().any(|p| p == k) {
                        push(v, Location::Param(k.to_owned()));
                    }
                }
            }
        }
        found
    }

    fn refused(&self, token: &str, error: TokenError) -> Refused {
        Refused {
            error,
            token: self.token_label(token),
        }
    }

    /// How logs may name `token` ([`TokenLog`]).
    pub fn token_label(&self, token: &str) -> Option<String> {
        match self.settings.log_token {
            TokenLog::Off => None,
            TokenLog::Hash => {
                let digest = picket_common::crypto::sha256(token.as_bytes());
                Some(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
            }
            TokenLog::Subject => jsonwebtoken::dangerous::insecure_decode_claims::<
                serde_json::Map<String, serde_json::Value>,
            >(token)
            .ok()
            .and_then(|c| {
                c.get("sub").and_then(|s| s.as_str()).map(|s| {
                    let mut s = s.to_owned();
                    truncate(&mut s, 128);
                    format!("sub:{s}")
                })
            }),
        }
    }

    /// Readies an allowed request for the app: the rules' output headers a client sent are
    /// removed; for a validated token, its rule's outputs are set and the token is removed
    /// unless the rule forwards it.
    pub fn prepare_forward(&self, parts: &mut http::request::Parts, auth: Option<&Authenticated>) {
        for name in &self.outputs {
            parts.headers.remove(name);
        }
        let Some(auth) = auth else { return };
        let Some(rule) = self.rules.get(auth.rule) else {
            return;
        };
        if !rule.rule.forward_original_token {
            match &auth.location {
                Location::Header(name) => {
                    parts.headers.remove(name);
                }
                Location::Param(param) => remove_query_param(&mut parts.uri, param),
            }
        }
        if let Some(h) = &rule.payload_header
            && let Ok(v) = HeaderValue::from_str(&auth.payload)
        {
            parts.headers.insert(h.clone(), v);
        }
        for (header, path) in &rule.outputs {
            let value = auth
                .auth
                .claim(path)
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    serde_json::Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                })
                .and_then(|s| HeaderValue::from_str(&s).ok());
            if let Some(v) = value {
                parts.headers.insert(header.clone(), v);
            }
        }
    }

    /// The request principal for a flow record, cut to the configured length.
    pub fn flow_principal(&self, auth: &Authenticated) -> Option<String> {
        let mut p = auth.auth.principal.clone()?;
        truncate(&mut p, self.settings.max_principal_bytes);
        Some(p)
    }
}

impl IssuerRule {
    fn reads(&self, loc: &Location) -> bool {
        match loc {
            Location::Header(h) => self.headers.iter().any(|(n, _)| n == h),
            Location::Param(p) => self.params.iter().any(|x| x == p),
        }
    }
}

/// A refused token: why, and how logs may name it.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Why.
    pub error: TokenError,
    /// The token's log label ([`TokenLog`]).
    pub token: Option<String>,
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Removes every `name=...` pair from the query of `uri`.
fn remove_query_param(uri: &mut http::Uri, name: &str) {
    let Some(query) = uri.query() else { return };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    let path = uri.path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(new) = http::Uri::from_parts(parts) {
            *uri = new;
        }
    }
}

/// The keys a rule's tokens are checked with: an inline key set read now (an unusable one is
/// an error), or the registry's fetcher for its `jwksUri`.
fn rule_keys(
    rule: &JwtRule,
    registry: Result<&JwksRegistry, &str>,
    where_: &str,
) -> Result<Keys, AuthnError> {
    match &rule.jwks {
        JwksSource::Inline(text) => {
            let (keys, skipped) = KeySet::parse(text.as_bytes()).map_err(|e| {
                AuthnError(format!("{where_}: issuer `{}`: jwks: {e}", rule.issuer))
            })?;
            for s in skipped {
                tracing::warn!(issuer = %rule.issuer, "inline JWKS key skipped: {s}");
            }
            Ok(Keys::Inline(Arc::new(keys)))
        }
        JwksSource::Uri(uri) => match registry {
            Ok(r) => Ok(Keys::Remote(r.get(uri))),
            Err(why) => Err(AuthnError(format!(
                "{where_}: issuer `{}`: jwksUri `{uri}` cannot be fetched: {why}",
                rule.issuer
            ))),
        },
    }
}

#[cfg(test)]
mod tests;
