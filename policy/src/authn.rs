//! `RequestAuthentication` documents: which JWTs a workload accepts, where it finds them, where
//! their keys come from, and what reaches the application. Decoded (fail closed, with
//! positions) in [`crate::decode`], selected per workload like AuthorizationPolicy, and
//! enforced by the sidecar, which validates tokens and hands their claims to evaluation as
//! [`crate::RequestAuth`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use crate::model::{ApiVersion, Header, flow_list, quoted, write_header};
use crate::workload::Workload;

/// The header Istio reads a token from when a rule names no location.
pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
/// The prefix of [`DEFAULT_TOKEN_HEADER`].
pub const DEFAULT_TOKEN_PREFIX: &str = "Bearer ";
/// The query parameter Istio reads a token from when a rule names no location.
pub const DEFAULT_TOKEN_PARAM: &str = "access_token";

/// One `RequestAuthentication` document.
#[derive(Debug, Clone)]
pub struct RequestAuthentication {
    pub(crate) api_version: ApiVersion,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// `spec.selector.matchLabels`; empty selects every workload of the namespace.
    pub selector: BTreeMap<String, String>,
    /// `spec.jwtRules`, in document order.
    pub rules: Vec<JwtRule>,
    /// The source the document came from.
    pub source: String,
    /// The line the document starts on.
    pub line: u64,
}

/// Equal documents, whatever files they came from.
impl PartialEq for RequestAuthentication {
    fn eq(&self, other: &Self) -> bool {
        self.api_version == other.api_version
            && self.namespace == other.namespace
            && self.name == other.name
            && self.labels == other.labels
            && self.annotations == other.annotations
            && self.selector == other.selector
            && self.rules == other.rules
    }
}

/// Where a rule's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `jwksUri`: fetched over HTTPS, cached and refreshed by the sidecar.
    Uri(String),
    /// `jwks`: the JWK set inline, as JSON text.
    Inline(String),
}

/// A header a token is read from, with the prefix before the token (`Bearer `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The header name, lowercase.
    pub name: String,
    /// The text before the token; empty for none. Compared case-insensitively.
    pub prefix: String,
}

/// `outputClaimToHeaders[]`: a claim copied into a request header for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// The header name, lowercase.
    pub header: String,
    /// The claim as written (`sub`, or `realm.role` for a nested claim).
    pub claim: String,
}

impl ClaimToHeader {
    /// The claim's path: `realm.role` is `["realm", "role"]`.
    pub fn path(&self) -> Vec<Box<str>> {
        self.claim.split('.').map(Box::from).collect()
    }
}

/// One `spec.jwtRules[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRule {
    /// `issuer`: the `iss` a token must carry to be validated by this rule.
    pub issuer: String,
    /// `audiences`: one of them must be in the token's `aud`; empty accepts any audience.
    pub audiences: Vec<String>,
    /// `jwksUri` or `jwks`.
    pub jwks: JwksSource,
    /// `fromHeaders`, as written.
    pub from_headers: Vec<TokenHeader>,
    /// `fromParams`, as written.
    pub from_params: Vec<String>,
    /// `outputPayloadToHeader`, lowercase.
    pub output_payload_to_header: Option<String>,
    /// `forwardOriginalToken` (default false: the token is removed before the application).
    pub forward_original_token: bool,
    /// `outputClaimToHeaders`.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
}

impl JwtRule {
    /// The headers a token is looked for in: `fromHeaders`, or `Authorization: Bearer` when the
    /// rule names neither headers nor parameters.
    pub fn token_headers(&self) -> Vec<TokenHeader> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            return vec![TokenHeader {
                name: DEFAULT_TOKEN_HEADER.to_owned(),
                prefix: DEFAULT_TOKEN_PREFIX.to_owned(),
            }];
        }
        self.from_headers.clone()
    }

    /// The query parameters a token is looked for in: `fromParams`, or `access_token` when the
    /// rule names neither headers nor parameters.
    pub fn token_params(&self) -> Vec<String> {
        if self.from_headers.is_empty() && self.from_params.is_empty() {
            return vec![DEFAULT_TOKEN_PARAM.to_owned()];
        }
        self.from_params.clone()
    }
}

impl RequestAuthentication {
    /// Whether the document applies to `w`: same namespace or the root namespace, and every
    /// selector label among the workload's.
    pub fn applies_to(&self, w: &Workload, root_namespace: &str) -> bool {
        (self.namespace == w.namespace || self.namespace == root_namespace)
            && self
                .selector
                .iter()
                .all(|(k, v)| w.labels.get(k) == Some(v))
    }

    /// `namespace/name`.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The canonical YAML document (without the `---` separator).
    pub(crate) fn to_yaml(&self) -> String {
        let mut out = String::new();
        let _ = self.write_yaml(&mut out);
        out
    }

    fn write_yaml(&self, out: &mut String) -> fmt::Result {
        write_header(
            out,
            Header {
                api_version: self.api_version.as_str(),
                kind: "RequestAuthentication",
                name: &self.name,
                namespace: &self.namespace,
                labels: &self.labels,
                annotations: &self.annotations,
                selector: &self.selector,
            },
        )?;
        writeln!(out, "  jwtRules:")?;
        for rule in &self.rules {
            writeln!(out, "  - issuer: {}", quoted(&rule.issuer))?;
            if !rule.audiences.is_empty() {
                writeln!(out, "    audiences: {}", flow_list(&rule.audiences))?;
            }
            match &rule.jwks {
                JwksSource::Uri(uri) => writeln!(out, "    jwksUri: {}", quoted(uri))?,
                JwksSource::Inline(text) => writeln!(out, "    jwks: {}", quoted(text))?,
            }
            if !rule.from_headers.is_empty() {
                writeln!(out, "    fromHeaders:")?;
                for h in &rule.from_headers {
                    if h.prefix.is_empty() {
                        writeln!(out, "    - name: {}", quoted(&h.name))?;
                    } else {
                        writeln!(
                            out,
                            "    - {{name: {}, prefix: {}}}",
                            quoted(&h.name),
                            quoted(&h.prefix)
                        )?;
                    }
                }
            }
            if !rule.from_params.is_empty() {
                writeln!(out, "    fromParams: {}", flow_list(&rule.from_params))?;
            }
            if let Some(h) = &rule.output_payload_to_header {
                writeln!(out, "    outputPayloadToHeader: {}", quoted(h))?;
            }
            if rule.forward_original_token {
                writeln!(out, "    forwardOriginalToken: true")?;
            }
            if !rule.output_claim_to_headers.is_empty() {
                writeln!(out, "    outputClaimToHeaders:")?;
                for c in &rule.output_claim_to_headers {
                    writeln!(
                        out,
                        "    - {{header: {}, claim: {}}}",
                        quoted(&c.header),
                        quoted(&c.claim)
                    )?;
                }
            }
        }
        Ok(())
    }
}
