//! From parsed YAML to the policy model and its compiled rules, failing closed: every unknown
//! or unsupported field, invalid value, empty list and contradiction is an error that points
//! at the offending key or value. Errors are collected; decoding goes on to find the others.

use crate::authn::{ClaimToHeader, JwksSource, JwtRule, RequestAuthentication, TokenHeader};
use crate::compile::{CompiledRule, CondKey, CondValues, Condition, Operation, Peer};
use crate::error::LoadError;
use crate::model::{
    Action, ApiVersion, ConditionSpec, Direction, ISTIO_DRY_RUN, Mode, OperationSpec, PeerSpec,
    Policy, Rule,
};
use crate::normalize::{Backslash, EncodedSlashes, PathOptions, PathParams, normalize_path};
use crate::pattern::{Cidr, HostMatch, StrMatch, is_tchar, parse_port_text, strip_spiffe};
use crate::yaml::{Key, Pos, Value, Yaml};

/// A decoded document.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) policy: Policy,
    pub(crate) rules: Vec<CompiledRule>,
    /// Where the document starts.
    pub(crate) pos: Pos,
    /// Where `metadata.name` is written (for duplicate-name errors).
    pub(crate) name_pos: Pos,
}

const DOC_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const DOC_UNSUPPORTED: &[(&str, &str)] = &[(
    "status",
    "it is written by the cluster; remove it from policy files",
)];
const METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];
const SERVER_SET: &str = "it is set by the Kubernetes API server; remove it from policy files";
const METADATA_UNSUPPORTED: &[(&str, &str)] = &[
    ("uid", SERVER_SET),
    ("resourceVersion", SERVER_SET),
    ("generation", SERVER_SET),
    ("creationTimestamp", SERVER_SET),
    ("deletionTimestamp", SERVER_SET),
    ("deletionGracePeriodSeconds", SERVER_SET),
    ("managedFields", SERVER_SET),
    ("selfLink", SERVER_SET),
    ("ownerReferences", SERVER_SET),
    ("finalizers", SERVER_SET),
    ("generateName", "a policy needs a fixed name"),
];
const SPEC_FIELDS: &[&str] = &["selector", "action", "mode", "direction", "rules"];
const SPEC_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "provider",
        "CUSTOM authorization through an external provider is not supported",
    ),
    (
        "targetRef",
        "policies apply to workloads through `selector` only",
    ),
    (
        "targetRefs",
        "policies apply to workloads through `selector` only",
    ),
];
const SELECTOR_FIELDS: &[&str] = &["matchLabels"];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const FROM_FIELDS: &[&str] = &["source"];
const TO_FIELDS: &[&str] = &["operation"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "requestPrincipals",
    "notRequestPrincipals",
];
const REMOTE_IP: &str = "the remote IP is read from X-Forwarded-For, which Picket does not trust; \
                         use `ipBlocks` (the peer address)";
const SOURCE_UNSUPPORTED: &[(&str, &str)] = &[
    ("remoteIpBlocks", REMOTE_IP),
    ("notRemoteIpBlocks", REMOTE_IP),
];
const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];
const HTTP_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];
const CONDITION_FIELDS: &[&str] = &["key", "values", "notValues"];
const EGRESS_WHEN_KEYS: &str = "destination.ip, destination.port, connection.sni";
const WHEN_KEYS: &str = "request.headers[NAME], source.ip, source.namespace, source.principal, \
                         destination.port, connection.sni, request.auth.principal, \
                         request.auth.audiences, request.auth.presenter, \
                         request.auth.claims[NAME]";
const AUTHN_SPEC_FIELDS: &[&str] = &["selector", "jwtRules"];
const JWT_RULE_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    "outputPayloadToHeader",
    "forwardOriginalToken",
    "outputClaimToHeaders",
];
const JWT_RULE_UNSUPPORTED: &[(&str, &str)] = &[
    (
        "fromCookies",
        "tokens are read from headers and query parameters only",
    ),
    (
        "timeout",
        "the JWKS fetch timeout is the sidecar's `jwt.fetchTimeout` setting",
    ),
];
const FROM_HEADER_FIELDS: &[&str] = &["name", "prefix"];
const CLAIM_TO_HEADER_FIELDS: &[&str] = &["header", "claim"];

/// The options policy paths are checked with: the most permissive reading that still yields
/// a canonical form, so a policy written for any proxy setting is accepted.
const PATTERN_PATH_OPTIONS: PathOptions = PathOptions {
    encoded_slashes: EncodedSlashes::Keep,
    backslash: Backslash::Reject,
    path_params: PathParams::Keep,
};

/// Fields by position and display name, for errors about several of them.
type Spots = Vec<(Pos, String)>;

/// Decodes the documents of one source, collecting errors.
pub(crate) struct Decoder<'a> {
    file: &'a str,
    text: &'a str,
    opaque_ports: &'a [u16],
    /// The document being decoded is an egress policy (`spec.direction: egress`): its rules
    /// are read as egress rules.
    egress: bool,
    pub(crate) errors: Vec<LoadError>,
    /// The `RequestAuthentication` documents decoded, with where their name is written.
    pub(crate) authentications: Vec<(RequestAuthentication, Pos)>,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str, opaque_ports: &'a [u16]) -> Self {
        Decoder {
            file,
            text,
            opaque_ports,
            egress: false,
            errors: Vec::new(),
            authentications: Vec::new(),
        }
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(LoadError::at(
            self.file,
            self.text,
            pos.line,
            pos.column,
            message.into(),
        ));
    }

    /// Decodes one document; `None` when it has errors (they are in `self.errors`).
    pub(crate) fn document(&mut self, doc: &Yaml) -> Option<Decoded> {
        let before = self.errors.len();
        let decoded = self.document_inner(doc);
        if self.errors.len() > before {
            None
        } else {
            decoded
        }
    }
}

mod document;
mod rule;
mod values;

#[cfg(test)]
mod tests;
