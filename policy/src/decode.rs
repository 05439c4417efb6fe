//! From parsed YAML to the policy model and its compiled rules, failing closed: every unknown
//! or unsupported field, invalid value, empty list and contradiction is an error that points
//! at the offending key or value. Errors are collected; decoding goes on to find the others.

use std::collections::BTreeMap;

use crate::authn::{ClaimToHeader, JwksSource, JwtRule, RequestAuthentication, TokenHeader};
use crate::compile::{CompiledRule, CondKey, CondValues, Condition, Operation, Peer};
use crate::error::LoadError;
use crate::model::{
    Action, ApiVersion, ConditionSpec, ISTIO_DRY_RUN, Mode, OperationSpec, PeerSpec, Policy, Rule,
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
const SPEC_FIELDS: &[&str] = &["selector", "action", "mode", "rules"];
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

/// A value with where it is written and how it was written.
#[derive(Debug, Clone)]
struct Item<T> {
    pos: Pos,
    raw: String,
    value: T,
}

fn raws<T>(items: &[Item<T>]) -> Vec<String> {
    items.iter().map(|i| i.raw.clone()).collect()
}

fn values<T: Clone>(items: &[Item<T>]) -> Vec<T> {
    items.iter().map(|i| i.value.clone()).collect()
}

/// The known entries of a mapping.
struct Fields<'y> {
    entries: Vec<(&'y Key, &'y Yaml)>,
    empty: bool,
}

impl<'y> Fields<'y> {
    fn get(&self, name: &str) -> Option<&'y Yaml> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| *v)
    }

    fn key_pos(&self, name: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k.pos)
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Decodes the documents of one source, collecting errors.
pub(crate) struct Decoder<'a> {
    file: &'a str,
    text: &'a str,
    opaque_ports: &'a [u16],
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

    /// The known fields of a mapping; unknown and unsupported ones are reported.
    fn fields<'y>(
        &mut self,
        node: &'y Yaml,
        path: &str,
        known: &[&str],
        unsupported: &[(&str, &str)],
    ) -> Option<Fields<'y>> {
        let Value::Map(entries) = &node.value else {
            let what = if path.is_empty() {
                "a policy document".to_owned()
            } else {
                format!("`{path}`")
            };
            self.error(
                node.pos,
                format!("{what}: expected a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        let mut fields = Fields {
            entries: Vec::new(),
            empty: entries.is_empty(),
        };
        for (key, value) in entries {
            if known.contains(&key.name.as_str()) {
                fields.entries.push((key, value));
            } else if let Some((_, why)) = unsupported.iter().find(|(n, _)| *n == key.name) {
                self.error(
                    key.pos,
                    format!(
                        "`{}` is not supported by Picket: {why}",
                        join(path, &key.name)
                    ),
                );
            } else {
                let place = if path.is_empty() {
                    "the document".to_owned()
                } else {
                    format!("`{path}`")
                };
                self.error(
                    key.pos,
                    format!(
                        "unknown field `{}` in {place}; expected one of: {}",
                        key.name,
                        known.join(", ")
                    ),
                );
            }
        }
        Some(fields)
    }

    fn required<'y>(
        &mut self,
        fields: &Fields<'y>,
        parent: &Yaml,
        path: &str,
        name: &str,
    ) -> Option<&'y Yaml> {
        let found = fields.get(name);
        if found.is_none() {
            self.error(
                parent.pos,
                format!("missing required field `{}`", join(path, name)),
            );
        }
        found
    }

    fn string<'y>(&mut self, node: &'y Yaml, path: &str) -> Option<&'y str> {
        match &node.value {
            Value::Str(s) => Some(s),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let text = node.value.scalar_text().unwrap_or_default();
                self.error(
                    node.pos,
                    format!(
                        "`{path}`: expected a string, found {} ({text}); quote it if a string \
                         was meant",
                        node.value.kind()
                    ),
                );
                None
            }
            other => {
                self.error(
                    node.pos,
                    format!("`{path}`: expected a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A non-empty list whose items are read by `read` (which gets the item and its path).
    fn list<'y, T>(
        &mut self,
        node: &'y Yaml,
        path: &str,
        mut read: impl FnMut(&mut Self, &'y Yaml, &str) -> Option<T>,
    ) -> Vec<T> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node.pos,
                format!("`{path}`: expected a list, found {}", node.value.kind()),
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.pos,
                format!("`{path}` is empty: list at least one value, or remove it"),
            );
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| read(self, item, &format!("{path}[{i}]")))
            .collect()
    }

    /// A list of strings, each checked by `parse`.
    fn patterns<T, E: std::fmt::Display>(
        &mut self,
        node: Option<&Yaml>,
        path: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Vec<Item<T>> {
        let Some(node) = node else {
            return Vec::new();
        };
        self.list(node, path, |d, item, item_path| {
            let s = d.string(item, item_path)?;
            match parse(s) {
                Ok(value) => Some(Item {
                    pos: item.pos,
                    raw: s.to_owned(),
                    value,
                }),
                Err(why) => {
                    d.error(item.pos, format!("`{item_path}`: {why}"));
                    None
                }
            }
        })
    }

    /// A list of ports, written as numbers or strings.
    fn ports(&mut self, node: Option<&Yaml>, path: &str) -> Vec<Item<u16>> {
        let Some(node) = node else {
            return Vec::new();
        };
        self.list(node, path, |d, item, item_path| {
            let parsed = match &item.value {
                Value::Str(s) => parse_port_text(s),
                Value::Int(n) => u16::try_from(*n)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{n}` is not a port number (1 to 65535)")),
                other => Err(format!("expected a port number, found {}", other.kind())),
            };
            match parsed {
                Ok(port) => Some(Item {
                    pos: item.pos,
                    raw: port.to_string(),
                    value: port,
                }),
                Err(why) => {
                    d.error(item.pos, format!("`{item_path}`: {why}"));
                    None
                }
            }
        })
    }

    /// A `not*` value equal to a positive one makes the object unmatchable.
    fn contradiction<T: PartialEq>(
        &mut self,
        path: &str,
        positive: (&str, &[Item<T>]),
        negative: (&str, &[Item<T>]),
    ) {
        for n in negative.1 {
            if positive.1.iter().any(|p| p.value == n.value) {
                self.error(
                    n.pos,
                    format!(
                        "`{}` is listed in both `{}` and `{}` of `{path}`: it can never match",
                        n.raw, positive.0, negative.0
                    ),
                );
            }
        }
    }

    fn string_map(&mut self, node: &Yaml, path: &str) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("`{path}`: expected a mapping, found {}", node.value.kind()),
            );
            return map;
        };
        for (key, value) in entries {
            if key.name.is_empty() {
                self.error(key.pos, format!("`{path}`: empty key"));
                continue;
            }
            if let Some(v) = self.string(value, &join(path, &key.name)) {
                map.insert(key.name.clone(), v.to_owned());
            }
        }
        map
    }

    fn document_inner(&mut self, doc: &Yaml) -> Option<Decoded> {
        let f = self.fields(doc, "", DOC_FIELDS, DOC_UNSUPPORTED)?;
        let api_version = self
            .required(&f, doc, "", "apiVersion")
            .and_then(|n| self.api_version(n));
        if let Some(kind) = self.required(&f, doc, "", "kind")
            && let Some(k) = self.string(kind, "kind")
            && k != "AuthorizationPolicy"
        {
            if k == "RequestAuthentication" {
                self.authentication(doc, &f, api_version);
                return None;
            }
            self.error(
                kind.pos,
                format!(
                    "unsupported kind `{k}`: Picket reads AuthorizationPolicy and \
                     RequestAuthentication documents only"
                ),
            );
        }
        let metadata = self
            .required(&f, doc, "", "metadata")
            .and_then(|n| self.metadata(n));
        let spec = self
            .required(&f, doc, "", "spec")
            .and_then(|n| self.spec(n));
        let (api_version, (name, namespace, labels, annotations, name_pos), spec) =
            (api_version?, metadata?, spec?);

        let annotation_mode = match annotations.get(ISTIO_DRY_RUN).map(String::as_str) {
            None => None,
            Some("true") => Some(Mode::DryRun),
            Some("false") => Some(Mode::Enforce),
            Some(other) => {
                self.error(
                    name_pos,
                    format!(
                        "annotation `{ISTIO_DRY_RUN}` must be \"true\" or \"false\", not `{other}`"
                    ),
                );
                None
            }
        };
        if let (Some((mode, pos)), Some(annotated)) = (spec.mode, annotation_mode)
            && mode != annotated
        {
            self.error(
                pos,
                format!(
                    "`spec.mode: {mode}` contradicts the annotation `{ISTIO_DRY_RUN}`; keep one"
                ),
            );
        }
        let policy = Policy {
            api_version,
            name,
            namespace,
            labels,
            annotations,
            selector: spec.selector,
            action: spec.action.0,
            spec_mode: spec.mode.map(|(m, _)| m),
            rules: spec.rules.iter().map(|(r, _)| r.clone()).collect(),
        };
        let action_pos = spec.action.1.unwrap_or(doc.pos);
        if policy.rules.is_empty() && policy.action != Action::Allow {
            self.error(
                action_pos,
                format!(
                    "{} {} policy without rules never matches anything; add rules \
                     (a rule `{{}}` matches every request)",
                    if policy.action == Action::Audit {
                        "an"
                    } else {
                        "a"
                    },
                    policy.action
                ),
            );
        }
        if policy.action == Action::Audit && policy.mode() == Mode::DryRun {
            self.error(
                spec.mode.map(|(_, p)| p).unwrap_or(name_pos),
                "an AUDIT policy never changes the verdict, so `dry-run` has no meaning for it; \
                 remove the mode",
            );
        }
        Some(Decoded {
            policy,
            rules: spec.rules.into_iter().map(|(_, c)| c).collect(),
            pos: doc.pos,
            name_pos,
        })
    }

    /// A `RequestAuthentication` document (its kind already read); kept in
    /// `self.authentications` when it has no errors.
    fn authentication(&mut self, doc: &Yaml, f: &Fields<'_>, api_version: Option<ApiVersion>) {
        let before = self.errors.len();
        let metadata = self
            .required(f, doc, "", "metadata")
            .and_then(|n| self.metadata(n));
        let spec = self
            .required(f, doc, "", "spec")
            .and_then(|n| self.authn_spec(n));
        let (
            Some(api_version),
            Some((name, namespace, labels, annotations, name_pos)),
            Some((selector, rules)),
        ) = (api_version, metadata, spec)
        else {
            return;
        };
        if self.errors.len() > before {
            return;
        }
        self.authentications.push((
            RequestAuthentication {
                api_version,
                namespace,
                name,
                labels,
                annotations,
                selector,
                rules,
                source: self.file.to_owned(),
                line: doc.pos.line,
            },
            name_pos,
        ));
    }

    fn authn_spec(&mut self, node: &Yaml) -> Option<(BTreeMap<String, String>, Vec<JwtRule>)> {
        let f = self.fields(node, "spec", AUTHN_SPEC_FIELDS, SPEC_UNSUPPORTED)?;
        let selector = match f.get("selector") {
            None => BTreeMap::new(),
            Some(sel) => match self.fields(sel, "spec.selector", SELECTOR_FIELDS, &[]) {
                None => BTreeMap::new(),
                Some(sf) => sf
                    .get("matchLabels")
                    .map(|m| self.string_map(m, "spec.selector.matchLabels"))
                    .unwrap_or_default(),
            },
        };
        let Some(rules_node) = f.get("jwtRules") else {
            self.error(
                node.pos,
                "a RequestAuthentication without `spec.jwtRules` validates nothing; list at \
                 least one rule",
            );
            return None;
        };
        let rules = self.list(rules_node, "spec.jwtRules", |d, item, item_path| {
            d.jwt_rule(item, item_path)
        });
        // One issuer, one rule: a token is matched to its rule by `iss`.
        if let Value::Seq(items) = &rules_node.value {
            for (i, rule) in rules.iter().enumerate() {
                if rules[..i].iter().any(|r| r.issuer == rule.issuer) {
                    let pos = items.get(i).map_or(rules_node.pos, |n| n.pos);
                    self.error(
                        pos,
                        format!(
                            "`spec.jwtRules[{i}]`: issuer `{}` has an earlier rule; a token is \
                             matched to its rule by issuer, so each issuer has one rule",
                            rule.issuer
                        ),
                    );
                }
            }
        }
        Some((selector, rules))
    }

    fn jwt_rule(&mut self, node: &Yaml, path: &str) -> Option<JwtRule> {
        let f = self.fields(node, path, JWT_RULE_FIELDS, JWT_RULE_UNSUPPORTED)?;
        let p = |name: &str| format!("{path}.{name}");
        let issuer = self
            .required(&f, node, path, "issuer")
            .and_then(|n| self.string(n, &p("issuer")).map(|s| (n.pos, s.to_owned())));
        if let Some((pos, iss)) = &issuer
            && (iss.is_empty() || iss.chars().any(char::is_control))
        {
            self.error(
                *pos,
                format!(
                    "`{}`: an issuer is a non-empty string without control characters",
                    p("issuer")
                ),
            );
        }
        let audiences = self.patterns(f.get("audiences"), &p("audiences"), |s: &str| {
            if s.is_empty() || s.chars().any(char::is_control) {
                Err(format!(
                    "`{s}` is not an audience (non-empty, no control characters)"
                ))
            } else {
                Ok(s.to_owned())
            }
        });
        let jwks = match (f.get("jwksUri"), f.get("jwks")) {
            (Some(_), Some(_)) => {
                self.error(
                    f.key_pos("jwks").unwrap_or(node.pos),
                    format!("`{path}` gives both `jwksUri` and `jwks`; keep one"),
                );
                None
            }
            (None, None) => {
                self.error(
                    node.pos,
                    format!(
                        "`{path}` needs `jwksUri` or `jwks`: Picket does not discover keys \
                         through the issuer's OpenID configuration"
                    ),
                );
                None
            }
            (Some(n), None) => {
                self.string(n, &p("jwksUri"))
                    .and_then(|uri| match check_jwks_uri(uri) {
                        Ok(()) => Some(JwksSource::Uri(uri.to_owned())),
                        Err(why) => {
                            self.error(n.pos, format!("`{}`: {why}", p("jwksUri")));
                            None
                        }
                    })
            }
            (None, Some(n)) => self
                .string(n, &p("jwks"))
                .and_then(|text| match check_inline_jwks(text) {
                    Ok(()) => Some(JwksSource::Inline(text.to_owned())),
                    Err(why) => {
                        self.error(n.pos, format!("`{}`: {why}", p("jwks")));
                        None
                    }
                }),
        };
        let from_headers = match f.get("fromHeaders") {
            None => Vec::new(),
            Some(n) => self.list(n, &p("fromHeaders"), |d, item, item_path| {
                let hf = d.fields(item, item_path, FROM_HEADER_FIELDS, &[])?;
                let name_node = d.required(&hf, item, item_path, "name")?;
                let name = d.string(name_node, &format!("{item_path}.name"))?;
                if let Err(why) = check_header_name(name) {
                    d.error(name_node.pos, format!("`{item_path}.name`: {why}"));
                    return None;
                }
                let prefix = match hf.get("prefix") {
                    None => String::new(),
                    Some(pn) => {
                        let prefix = d.string(pn, &format!("{item_path}.prefix"))?;
                        if prefix.chars().any(char::is_control) {
                            d.error(
                                pn.pos,
                                format!("`{item_path}.prefix` cannot contain control characters"),
                            );
                            return None;
                        }
                        prefix.to_owned()
                    }
                };
                Some(TokenHeader {
                    name: name.to_ascii_lowercase(),
                    prefix,
                })
            }),
        };
        let from_params = self.patterns(f.get("fromParams"), &p("fromParams"), |s: &str| {
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            {
                Err(format!(
                    "`{s}` is not a query parameter name (letters, digits, `-._~`)"
                ))
            } else {
                Ok(s.to_owned())
            }
        });
        let output_payload_to_header = f.get("outputPayloadToHeader").and_then(|n| {
            let name = self.string(n, &p("outputPayloadToHeader"))?;
            match check_output_header(name) {
                Ok(()) => Some(name.to_ascii_lowercase()),
                Err(why) => {
                    self.error(n.pos, format!("`{}`: {why}", p("outputPayloadToHeader")));
                    None
                }
            }
        });
        let forward_original_token = match f.get("forwardOriginalToken") {
            None => false,
            Some(n) => match &n.value {
                Value::Bool(b) => *b,
                other => {
                    self.error(
                        n.pos,
                        format!(
                            "`{}`: expected true or false, found {}",
                            p("forwardOriginalToken"),
                            other.kind()
                        ),
                    );
                    false
                }
            },
        };
        let output_claim_to_headers = match f.get("outputClaimToHeaders") {
            None => Vec::new(),
            Some(n) => self.list(n, &p("outputClaimToHeaders"), |d, item, item_path| {
                let cf = d.fields(item, item_path, CLAIM_TO_HEADER_FIELDS, &[])?;
                let header_node = d.required(&cf, item, item_path, "header");
                let claim_node = d.required(&cf, item, item_path, "claim");
                let header = header_node.and_then(|h| d.string(h, &format!("{item_path}.header")));
                let claim = claim_node.and_then(|c| d.string(c, &format!("{item_path}.claim")));
                let (header_node, claim_node, header, claim) =
                    (header_node?, claim_node?, header?, claim?);
                if let Err(why) = check_output_header(header) {
                    d.error(header_node.pos, format!("`{item_path}.header`: {why}"));
                    return None;
                }
                if claim.is_empty()
                    || claim.split('.').any(str::is_empty)
                    || claim.chars().any(char::is_control)
                {
                    d.error(
                        claim_node.pos,
                        format!("`{item_path}.claim`: `{claim}` is not a claim name (`sub`, or `realm.role` for a nested claim)"),
                    );
                    return None;
                }
                Some(ClaimToHeader {
                    header: header.to_ascii_lowercase(),
                    claim: claim.to_owned(),
                })
            }),
        };
        Some(JwtRule {
            issuer: issuer?.1,
            audiences: values(&audiences),
            jwks: jwks?,
            from_headers,
            from_params: values(&from_params),
            output_payload_to_header,
            forward_original_token,
            output_claim_to_headers,
        })
    }

    fn api_version(&mut self, node: &Yaml) -> Option<ApiVersion> {
        let s = self.string(node, "apiVersion")?;
        let found = ApiVersion::ALL.into_iter().find(|v| v.as_str() == s);
        if found.is_none() {
            let known: Vec<&str> = ApiVersion::ALL.iter().map(|v| v.as_str()).collect();
            self.error(
                node.pos,
                format!(
                    "unsupported apiVersion `{s}`; expected one of: {}",
                    known.join(", ")
                ),
            );
        }
        found
    }

    #[allow(clippy::type_complexity)]
    fn metadata(
        &mut self,
        node: &Yaml,
    ) -> Option<(
        String,
        String,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Pos,
    )> {
        let f = self.fields(node, "metadata", METADATA_FIELDS, METADATA_UNSUPPORTED)?;
        let name_node = self.required(&f, node, "metadata", "name");
        let name = name_node.and_then(|n| self.string(n, "metadata.name"));
        if let (Some(n), Some(name)) = (name_node, name)
            && !is_dns_subdomain(name)
        {
            self.error(
                n.pos,
                format!(
                    "`metadata.name`: `{name}` is not a valid name (lowercase letters, digits, \
                     `-` and `.`, starting and ending with a letter or digit)"
                ),
            );
        }
        let ns_node = self.required(&f, node, "metadata", "namespace");
        let namespace = ns_node.and_then(|n| self.string(n, "metadata.namespace"));
        if let (Some(n), Some(ns)) = (ns_node, namespace)
            && !is_dns_label(ns)
        {
            self.error(
                n.pos,
                format!(
                    "`metadata.namespace`: `{ns}` is not a valid namespace (lowercase letters, \
                     digits and `-`, at most 63)"
                ),
            );
        }
        let labels = f
            .get("labels")
            .map(|n| self.string_map(n, "metadata.labels"))
            .unwrap_or_default();
        let annotations = f
            .get("annotations")
            .map(|n| self.string_map(n, "metadata.annotations"))
            .unwrap_or_default();
        Some((
            name?.to_owned(),
            namespace?.to_owned(),
            labels,
            annotations,
            name_node?.pos,
        ))
    }

    fn spec(&mut self, node: &Yaml) -> Option<SpecParts> {
        let f = self.fields(node, "spec", SPEC_FIELDS, SPEC_UNSUPPORTED)?;
        let selector = match f.get("selector") {
            None => BTreeMap::new(),
            Some(sel) => match self.fields(sel, "spec.selector", SELECTOR_FIELDS, &[]) {
                None => BTreeMap::new(),
                Some(sf) => sf
                    .get("matchLabels")
                    .map(|m| self.string_map(m, "spec.selector.matchLabels"))
                    .unwrap_or_default(),
            },
        };
        let action = match f.get("action") {
            None => (Action::Allow, None),
            Some(n) => {
                let action = match self.string(n, "spec.action") {
                    Some("ALLOW") => Some(Action::Allow),
                    Some("DENY") => Some(Action::Deny),
                    Some("AUDIT") => Some(Action::Audit),
                    Some("CUSTOM") => {
                        self.error(
                            n.pos,
                            "`spec.action: CUSTOM` is not supported by Picket: CUSTOM delegates \
                             to an external authorization provider",
                        );
                        None
                    }
                    Some(other) => {
                        self.error(
                            n.pos,
                            format!(
                                "`spec.action`: unknown action `{other}`; expected ALLOW, DENY \
                                 or AUDIT"
                            ),
                        );
                        None
                    }
                    None => None,
                };
                (action.unwrap_or(Action::Allow), Some(n.pos))
            }
        };
        let mode = match f.get("mode") {
            None => None,
            Some(n) => match self.string(n, "spec.mode") {
                Some("enforce") => Some((Mode::Enforce, n.pos)),
                Some("dry-run") => Some((Mode::DryRun, n.pos)),
                Some(other) => {
                    self.error(
                        n.pos,
                        format!("`spec.mode`: unknown mode `{other}`; expected enforce or dry-run"),
                    );
                    None
                }
                None => None,
            },
        };
        let rules = match f.get("rules") {
            None => Vec::new(),
            Some(n) => match &n.value {
                Value::Seq(items) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| self.rule(r, &format!("spec.rules[{i}]")))
                    .collect(),
                other => {
                    self.error(
                        n.pos,
                        format!("`spec.rules`: expected a list, found {}", other.kind()),
                    );
                    Vec::new()
                }
            },
        };
        Some(SpecParts {
            selector,
            action,
            mode,
            rules,
        })
    }

    fn rule(&mut self, node: &Yaml, path: &str) -> Option<(Rule, CompiledRule)> {
        let f = self.fields(node, path, RULE_FIELDS, &[])?;
        let mut rule = Rule::default();
        let mut compiled = CompiledRule::default();
        // HTTP-only fields of each operation, with the ports that operation names.
        let mut op_http: Vec<(Vec<u16>, Spots)> = Vec::new();
        let mut header_conditions: Vec<(Pos, String)> = Vec::new();

        if let Some(from) = f.get("from") {
            let from_path = format!("{path}.from");
            let entries = self.list(from, &from_path, |d, item, item_path| {
                let ef = d.fields(item, item_path, FROM_FIELDS, &[])?;
                let source = d.required(&ef, item, item_path, "source")?;
                d.source(source, &format!("{item_path}.source"))
            });
            for (spec, peer) in entries {
                rule.from.push(spec);
                compiled.from.push(peer);
            }
        }
        if let Some(to) = f.get("to") {
            let to_path = format!("{path}.to");
            let entries = self.list(to, &to_path, |d, item, item_path| {
                let ef = d.fields(item, item_path, TO_FIELDS, &[])?;
                let op = d.required(&ef, item, item_path, "operation")?;
                d.operation(op, &format!("{item_path}.operation"))
            });
            for (spec, op, fields) in entries {
                op_http.push((spec.ports.clone(), fields));
                rule.to.push(spec);
                compiled.to.push(op);
            }
        }
        // The ports every `destination.port` condition allows, when there are such conditions.
        let mut when_ports: Option<Vec<u16>> = None;
        if let Some(when) = f.get("when") {
            let when_path = format!("{path}.when");
            let conditions = self.list(when, &when_path, |d, item, item_path| {
                d.condition(item, item_path)
            });
            for (i, (spec, cond, key_pos)) in conditions.into_iter().enumerate() {
                if let CondValues::Port(ports) = &cond.values
                    && !ports.is_empty()
                {
                    when_ports = Some(match when_ports {
                        None => ports.clone(),
                        Some(prev) => prev.into_iter().filter(|p| ports.contains(p)).collect(),
                    });
                }
                if cond.is_http_only() {
                    header_conditions.push((key_pos, format!("`{when_path}[{i}]` ({})", spec.key)));
                }
                rule.when.push(spec);
                compiled.when.push(cond);
            }
        }
        compiled.http_only = compiled.from.iter().any(Peer::has_http_fields)
            || compiled.to.iter().any(Operation::has_http_fields)
            || compiled.when.iter().any(Condition::is_http_only);

        // HTTP-only fields where every port the request could arrive on is opaque TCP.
        let reachable = |ports: &[u16]| -> Option<Vec<u16>> {
            match (&when_ports, ports.is_empty()) {
                (None, true) => None,
                (None, false) => Some(ports.to_vec()),
                (Some(w), true) => Some(w.clone()),
                (Some(w), false) => Some(ports.iter().copied().filter(|p| w.contains(p)).collect()),
            }
        };
        let opaque = |ports: &[u16]| {
            !ports.is_empty() && ports.iter().all(|p| self.opaque_ports.contains(p))
        };
        let mut never: Vec<(Pos, String, Vec<u16>)> = Vec::new();
        let mut rule_ports: Option<Vec<u16>> = if op_http.is_empty() {
            when_ports.clone()
        } else {
            Some(Vec::new())
        };
        for (ports, fields) in &op_http {
            let op_reach = reachable(ports);
            match (&mut rule_ports, &op_reach) {
                (Some(all), Some(r)) => all.extend(r),
                _ => rule_ports = None,
            }
            if let Some(r) = op_reach.filter(|r| opaque(r)) {
                never.extend(
                    fields
                        .iter()
                        .map(|(pos, what)| (*pos, what.clone(), r.clone())),
                );
            }
        }
        if let Some(r) = rule_ports.filter(|r| opaque(r)) {
            never.extend(
                header_conditions
                    .iter()
                    .map(|(pos, what)| (*pos, what.clone(), r.clone())),
            );
        }
        for (pos, what, ports) in never {
            self.error(
                pos,
                format!(
                    "{what} can never match: it only applies to ports declared opaque TCP \
                     ({}), which carry no HTTP requests",
                    show_ports(&ports)
                ),
            );
        }
        Some((rule, compiled))
    }

    fn source(&mut self, node: &Yaml, path: &str) -> Option<(PeerSpec, Peer)> {
        let f = self.fields(node, path, SOURCE_FIELDS, SOURCE_UNSUPPORTED)?;
        if f.empty {
            self.error(
                node.pos,
                format!(
                    "`{path}` has no fields: remove the entry to match any source, or give it \
                     principals, requestPrincipals, namespaces or ipBlocks"
                ),
            );
        }
        let p = |name: &str| format!("{path}.{name}");
        let principals = self.patterns(f.get("principals"), &p("principals"), parse_principal);
        let not_principals =
            self.patterns(f.get("notPrincipals"), &p("notPrincipals"), parse_principal);
        let namespaces = self.patterns(f.get("namespaces"), &p("namespaces"), parse_namespace);
        let not_namespaces =
            self.patterns(f.get("notNamespaces"), &p("notNamespaces"), parse_namespace);
        let ip_blocks = self.patterns(f.get("ipBlocks"), &p("ipBlocks"), Cidr::parse);
        let not_ip_blocks = self.patterns(f.get("notIpBlocks"), &p("notIpBlocks"), Cidr::parse);
        let request_principals = self.patterns(
            f.get("requestPrincipals"),
            &p("requestPrincipals"),
            parse_request_principal,
        );
        let not_request_principals = self.patterns(
            f.get("notRequestPrincipals"),
            &p("notRequestPrincipals"),
            parse_request_principal,
        );
        self.contradiction(
            path,
            ("requestPrincipals", &request_principals),
            ("notRequestPrincipals", &not_request_principals),
        );
        self.contradiction(
            path,
            ("principals", &principals),
            ("notPrincipals", &not_principals),
        );
        self.contradiction(
            path,
            ("namespaces", &namespaces),
            ("notNamespaces", &not_namespaces),
        );
        self.contradiction(
            path,
            ("ipBlocks", &ip_blocks),
            ("notIpBlocks", &not_ip_blocks),
        );
        let spec = PeerSpec {
            principals: raws(&principals),
            not_principals: raws(&not_principals),
            namespaces: raws(&namespaces),
            not_namespaces: raws(&not_namespaces),
            ip_blocks: raws(&ip_blocks),
            not_ip_blocks: raws(&not_ip_blocks),
            request_principals: raws(&request_principals),
            not_request_principals: raws(&not_request_principals),
        };
        let peer = Peer {
            principals: values(&principals),
            not_principals: values(&not_principals),
            namespaces: values(&namespaces),
            not_namespaces: values(&not_namespaces),
            ip_blocks: values(&ip_blocks),
            not_ip_blocks: values(&not_ip_blocks),
            request_principals: values(&request_principals),
            not_request_principals: values(&not_request_principals),
        };
        Some((spec, peer))
    }

    fn operation(&mut self, node: &Yaml, path: &str) -> Option<(OperationSpec, Operation, Spots)> {
        let f = self.fields(node, path, OPERATION_FIELDS, &[])?;
        if f.empty {
            self.error(
                node.pos,
                format!(
                    "`{path}` has no fields: remove the entry to match any operation, or give \
                     it hosts, ports, methods or paths"
                ),
            );
        }
        let p = |name: &str| format!("{path}.{name}");
        let hosts = self.patterns(f.get("hosts"), &p("hosts"), HostMatch::parse);
        let not_hosts = self.patterns(f.get("notHosts"), &p("notHosts"), HostMatch::parse);
        let ports = self.ports(f.get("ports"), &p("ports"));
        let not_ports = self.ports(f.get("notPorts"), &p("notPorts"));
        let methods = self.patterns(f.get("methods"), &p("methods"), parse_method);
        let not_methods = self.patterns(f.get("notMethods"), &p("notMethods"), parse_method);
        let paths = self.patterns(f.get("paths"), &p("paths"), parse_path);
        let not_paths = self.patterns(f.get("notPaths"), &p("notPaths"), parse_path);
        self.contradiction(path, ("hosts", &hosts), ("notHosts", &not_hosts));
        self.contradiction(path, ("ports", &ports), ("notPorts", &not_ports));
        self.contradiction(path, ("methods", &methods), ("notMethods", &not_methods));
        self.contradiction(path, ("paths", &paths), ("notPaths", &not_paths));

        let http_fields: Vec<(Pos, String)> = HTTP_FIELDS
            .iter()
            .filter_map(|name| f.key_pos(name).map(|pos| (pos, format!("`{}`", p(name)))))
            .collect();
        let port_values = values(&ports);
        let spec = OperationSpec {
            hosts: raws(&hosts),
            not_hosts: raws(&not_hosts),
            ports: port_values.clone(),
            not_ports: values(&not_ports),
            methods: raws(&methods),
            not_methods: raws(&not_methods),
            paths: raws(&paths),
            not_paths: raws(&not_paths),
        };
        let op = Operation {
            hosts: values(&hosts),
            not_hosts: values(&not_hosts),
            ports: port_values,
            not_ports: values(&not_ports),
            methods: values(&methods),
            not_methods: values(&not_methods),
            paths: values(&paths),
            not_paths: values(&not_paths),
        };
        Some((spec, op, http_fields))
    }

    fn condition(&mut self, node: &Yaml, path: &str) -> Option<(ConditionSpec, Condition, Pos)> {
        let f = self.fields(node, path, CONDITION_FIELDS, &[])?;
        let key_node = self.required(&f, node, path, "key")?;
        let key_text = self.string(key_node, &format!("{path}.key"))?;
        let key = match parse_condition_key(key_text) {
            Ok(key) => key,
            Err(why) => {
                self.error(key_node.pos, format!("`{path}.key`: {why}"));
                return None;
            }
        };
        let values_node = f.get("values");
        let not_values_node = f.get("notValues");
        if values_node.is_none() && not_values_node.is_none() {
            self.error(
                node.pos,
                format!("`{path}` needs `values`, `notValues` or both"),
            );
            return None;
        }
        let vp = format!("{path}.values");
        let np = format!("{path}.notValues");
        let (spec_values, spec_not, values, not_values) = match &key {
            CondKey::SourceIp => {
                let v = self.patterns(values_node, &vp, Cidr::parse);
                let n = self.patterns(not_values_node, &np, Cidr::parse);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Ip(values(&v)),
                    CondValues::Ip(values(&n)),
                )
            }
            CondKey::DestinationPort => {
                let v = self.ports(values_node, &vp);
                let n = self.ports(not_values_node, &np);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Port(values(&v)),
                    CondValues::Port(values(&n)),
                )
            }
            CondKey::Header(_)
            | CondKey::SourceNamespace
            | CondKey::SourcePrincipal
            | CondKey::Sni
            | CondKey::RequestPrincipal
            | CondKey::RequestAudiences
            | CondKey::RequestPresenter
            | CondKey::RequestClaim(_) => {
                let parse: fn(&str) -> Result<StrMatch, String> = match &key {
                    CondKey::SourceNamespace => parse_namespace,
                    CondKey::SourcePrincipal => parse_principal,
                    CondKey::Sni => parse_sni,
                    CondKey::RequestPrincipal => parse_request_principal,
                    _ => parse_header_value,
                };
                let v = self.patterns(values_node, &vp, parse);
                let n = self.patterns(not_values_node, &np, parse);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Str(values(&v)),
                    CondValues::Str(values(&n)),
                )
            }
        };
        let spec = ConditionSpec {
            key: key_text.to_owned(),
            values: spec_values,
            not_values: spec_not,
        };
        let condition = Condition {
            key,
            values,
            not_values,
        };
        Some((spec, condition, key_node.pos))
    }
}

/// `spec` once decoded: selector, (action, where), (mode, where), rules.
struct SpecParts {
    selector: BTreeMap<String, String>,
    action: (Action, Option<Pos>),
    mode: Option<(Mode, Pos)>,
    rules: Vec<(Rule, CompiledRule)>,
}

fn show_ports(ports: &[u16]) -> String {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    let text: Vec<String> = ports.iter().map(u16::to_string).collect();
    text.join(", ")
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn no_space_or_control(s: &str, what: &str) -> Result<(), String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}`: {what} cannot contain spaces or control characters"
        ));
    }
    Ok(())
}

/// A header name (an RFC 9110 token).
fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("`{name}` is not a header name"));
    }
    Ok(())
}

/// A header the sidecar writes for the application: a header name that is neither a
/// connection-level header nor one of the mesh's own.
fn check_output_header(name: &str) -> Result<(), String> {
    check_header_name(name)?;
    let lower = name.to_ascii_lowercase();
    let reserved = [
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
        "content-length",
        "traceparent",
        "tracestate",
    ];
    if reserved.contains(&lower.as_str()) || lower.starts_with("x-picket-") {
        return Err(format!(
            "`{name}` is a header the sidecar manages; choose another name"
        ));
    }
    Ok(())
}

/// `jwksUri`: an `https://` URL with a host. Keys fetched over plain HTTP could be replaced
/// by anyone on the path, so that scheme is refused.
pub(crate) fn check_jwks_uri(uri: &str) -> Result<(), String> {
    let Some(rest) = uri.strip_prefix("https://") else {
        return Err(format!(
            "`{uri}` is not an https:// URL; keys are fetched over HTTPS only"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || uri.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{uri}` is not a URL with a host (and no user info)"
        ));
    }
    Ok(())
}

/// `jwks`: a JSON object with a non-empty `keys` list of objects that each have `kty`. The
/// sidecar turns the keys into verification keys at load and refuses unusable ones.
pub(crate) fn check_inline_jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a JSON JWK set: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("a JWK set is a JSON object with a `keys` list")?;
    if keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    for (i, key) in keys.iter().enumerate() {
        if key.get("kty").and_then(serde_json::Value::as_str).is_none() {
            return Err(format!("key {i} of the JWK set has no `kty`"));
        }
    }
    Ok(())
}

/// `[a][b]` after `request.auth.claims`: one or more non-empty claim names in brackets.
fn parse_claim_path(key: &str, mut rest: &str) -> Result<Box<[Box<str>]>, String> {
    let mut path: Vec<Box<str>> = Vec::new();
    while !rest.is_empty() {
        let Some(inner) = rest.strip_prefix('[') else {
            return Err(format!(
                "`{key}`: expected `[claim]` after `request.auth.claims`"
            ));
        };
        let Some(end) = inner.find(']') else {
            return Err(format!("`{key}`: missing `]`"));
        };
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') || name.chars().any(char::is_control) {
            return Err(format!("`{key}`: `{name}` is not a claim name"));
        }
        path.push(name.into());
        rest = &inner[end + 1..];
    }
    if path.is_empty() {
        return Err(format!(
            "`{key}`: name the claim, as in `request.auth.claims[groups]`"
        ));
    }
    if path.len() > MAX_CLAIM_DEPTH {
        return Err(format!(
            "`{key}`: claims are read at most {MAX_CLAIM_DEPTH} levels deep"
        ));
    }
    Ok(path.into_boxed_slice())
}

/// How deep a `request.auth.claims[a][b]...` key may reach.
const MAX_CLAIM_DEPTH: usize = 8;

/// A request principal pattern: `iss/sub` of a JWT, in the four string forms (`*`,
/// `iss/*`, `*/sub`, exact).
fn parse_request_principal(s: &str) -> Result<StrMatch, String> {
    no_space_or_control(s, "a request principal")?;
    let m = StrMatch::parse(s)?;
    if let StrMatch::Exact(p) = &m
        && !p.contains('/')
    {
        return Err(format!(
            "`{s}` is not a request principal: write `issuer/subject` (or `issuer/*`, `*/subject`, `*`)"
        ));
    }
    Ok(m)
}

/// A principal pattern; a leading `spiffe://` is dropped so both spellings compare equal.
pub(crate) fn parse_principal(s: &str) -> Result<StrMatch, String> {
    no_space_or_control(s, "a principal")?;
    match StrMatch::parse(s)? {
        StrMatch::Exact(p) => match strip_spiffe(&p) {
            "" => Err(format!("`{s}` names no principal")),
            rest => Ok(StrMatch::Exact(rest.into())),
        },
        StrMatch::Prefix(p) => match strip_spiffe(&p) {
            "" => Ok(StrMatch::Present),
            rest => Ok(StrMatch::Prefix(rest.into())),
        },
        other => Ok(other),
    }
}

fn parse_namespace(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?;
    let ok = m
        .literal()
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(format!(
            "`{s}` is not a namespace (lowercase letters, digits and `-`)"
        ));
    }
    Ok(m)
}

fn parse_method(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?;
    let ok = m
        .literal()
        .bytes()
        .all(|b| is_tchar(b) && !b.is_ascii_lowercase());
    if !ok {
        return Err(format!(
            "`{s}` is not an uppercase HTTP method; methods are case-sensitive (write `GET`)"
        ));
    }
    Ok(m)
}

fn parse_sni(s: &str) -> Result<StrMatch, String> {
    let m = StrMatch::parse(s)?.map(|l| l.to_ascii_lowercase());
    let ok = m
        .literal()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(format!("`{s}` is not a server name"));
    }
    Ok(m)
}

fn parse_header_value(s: &str) -> Result<StrMatch, String> {
    if s.chars().any(|c| c.is_control()) {
        return Err(format!(
            "`{}`: header values cannot contain control characters",
            s.escape_debug()
        ));
    }
    StrMatch::parse(s)
}

/// Escapes in a path pattern must be what normalization leaves: two upper-case hex digits,
/// never an unreserved character.
fn escapes_are_canonical(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) else {
                return false;
            };
            let upper_hex = |c: &u8| c.is_ascii_digit() || (b'A'..=b'F').contains(c);
            if !upper_hex(h) || !upper_hex(l) {
                return false;
            }
            let text = [*h, *l];
            let value = std::str::from_utf8(&text)
                .ok()
                .and_then(|t| u8::from_str_radix(t, 16).ok());
            match value {
                Some(v) if v != 0 && !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)) => {}
                _ => return false,
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

/// A path pattern. Requests are matched after normalization, so a pattern that no normalized
/// path can equal (dot segments, `//`, lower-case escapes, `?`, `#`) is an error.
fn parse_path(s: &str) -> Result<StrMatch, String> {
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "`{s}`: paths are matched without query or fragment and cannot contain `?`, `#`, \
             spaces or control characters"
        ));
    }
    let m = StrMatch::parse(s)?;
    let never = |why: String| Err(format!("`{s}` can never match: {why}"));
    match &m {
        StrMatch::Present => {}
        StrMatch::Exact(lit) => {
            if !lit.starts_with('/') {
                return never("request paths always start with `/`".into());
            }
            match normalize_path(lit, &PATTERN_PATH_OPTIONS) {
                Ok(n) if n == **lit => {}
                Ok(n) => {
                    return never(format!(
                        "requests are matched after normalization, which makes it `{n}`"
                    ));
                }
                Err(e) => return never(format!("such a request is refused ({e})")),
            }
        }
        StrMatch::Prefix(lit) => {
            if !lit.starts_with('/') {
                return never("request paths always start with `/`".into());
            }
            // The complete segments must be normalized; the last, partial one may be the start
            // of any segment (`/.well*` is fine).
            let cut = lit.rfind('/').map(|i| i + 1).unwrap_or(0);
            let (whole, partial) = lit.split_at(cut);
            match normalize_path(whole, &PATTERN_PATH_OPTIONS) {
                Ok(n) if n == whole => {}
                Ok(n) => {
                    return never(format!(
                        "requests are matched after normalization, which makes `{whole}` `{n}`"
                    ));
                }
                Err(e) => return never(format!("such a request is refused ({e})")),
            }
            if !escapes_are_canonical(partial) || partial.contains('\\') {
                return never(
                    "escapes must be upper-case and not encode unreserved characters".into(),
                );
            }
        }
        StrMatch::Suffix(lit) => {
            let dotted = lit.contains("//")
                || lit.contains("/./")
                || lit.contains("/../")
                || lit.ends_with("/.")
                || lit.ends_with("/..");
            if dotted {
                return never("normalized paths have no empty or dot segments".into());
            }
            if !escapes_are_canonical(lit) || lit.contains('\\') {
                return never(
                    "escapes must be upper-case and not encode unreserved characters".into(),
                );
            }
        }
    }
    Ok(m)
}

/// A `when` key. Known Istio keys Picket does not support are named with the reason.
fn parse_condition_key(key: &str) -> Result<CondKey, String> {
    if let Some(rest) = key.strip_prefix("request.headers[") {
        let Some(name) = rest.strip_suffix(']') else {
            return Err(format!("`{key}`: missing `]`"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("`{key}`: `{name}` is not a header name"));
        }
        return Ok(CondKey::Header(name.to_ascii_lowercase().into()));
    }
    match key {
        "source.ip" => return Ok(CondKey::SourceIp),
        "source.namespace" => return Ok(CondKey::SourceNamespace),
        "source.principal" => return Ok(CondKey::SourcePrincipal),
        "destination.port" => return Ok(CondKey::DestinationPort),
        "connection.sni" => return Ok(CondKey::Sni),
        "request.auth.principal" => return Ok(CondKey::RequestPrincipal),
        "request.auth.audiences" => return Ok(CondKey::RequestAudiences),
        "request.auth.presenter" => return Ok(CondKey::RequestPresenter),
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return parse_claim_path(key, rest).map(CondKey::RequestClaim);
    }
    let why = if key.starts_with("request.auth.") {
        Some(
            "the JWT attributes are request.auth.principal, request.auth.audiences, \
             request.auth.presenter and request.auth.claims[NAME]",
        )
    } else if key == "remote.ip" {
        Some(
            "the remote IP is read from X-Forwarded-For, which Picket does not trust; use `source.ip`",
        )
    } else if key == "destination.ip" {
        Some("the destination address is always the workload's own; use `destination.port`")
    } else if key.starts_with("experimental.") {
        Some("experimental Envoy filter metadata does not exist in Picket")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("`{key}` is not supported by Picket: {why}")),
        None => Err(format!("unknown key `{key}`; supported keys: {WHEN_KEYS}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_must_be_reachable_after_normalization() {
        for ok in [
            "/api/orders",
            "/api/*",
            "/",
            "/*",
            "/.well-known/*",
            "/a/.*",
            "/a/..*",
            "*.php",
            "*",
            "/caf%C3%A9",
            "/a%2Fb",
            "/a;v=1",
        ] {
            assert!(parse_path(ok).is_ok(), "{ok}: {:?}", parse_path(ok));
        }
        for bad in [
            "api/orders",
            "/api/../admin",
            "/api//orders",
            "/api/./x*",
            "/caf%c3%a9",
            "/%61dmin",
            "/a?b=1",
            "/a#x",
            "*//x",
            "*/../x",
            "/a/*/b",
            "/a b",
            "/api/%2e%2e/*",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            parse_condition_key("request.headers[X-Tenant]"),
            Ok(CondKey::Header("x-tenant".into()))
        );
        assert!(parse_condition_key("request.headers[]").is_err());
        assert!(parse_condition_key("request.headers[a b]").is_err());
        assert_eq!(
            parse_condition_key("request.auth.claims[iss]"),
            Ok(CondKey::RequestClaim(vec!["iss".into()].into_boxed_slice()))
        );
        assert_eq!(
            parse_condition_key("request.auth.claims[realm][roles]"),
            Ok(CondKey::RequestClaim(
                vec!["realm".into(), "roles".into()].into_boxed_slice()
            ))
        );
        for bad in [
            "request.auth.claims",
            "request.auth.claims[]",
            "request.auth.claims[a",
            "request.auth.claims.a",
            "request.auth.claims[a]x",
            "request.auth.subject",
        ] {
            assert!(parse_condition_key(bad).is_err(), "{bad}");
        }
        assert!(
            parse_condition_key("source.port")
                .unwrap_err()
                .contains("unknown key")
        );
    }

    #[test]
    fn principals_drop_the_spiffe_scheme() {
        assert_eq!(
            parse_principal("spiffe://cluster.local/ns/a/sa/b"),
            Ok(StrMatch::Exact("cluster.local/ns/a/sa/b".into()))
        );
        assert_eq!(
            parse_principal("spiffe://cluster.local/ns/a/*"),
            Ok(StrMatch::Prefix("cluster.local/ns/a/".into()))
        );
        assert_eq!(parse_principal("spiffe://*"), Ok(StrMatch::Present));
        assert!(parse_principal("spiffe://").is_err());
        assert!(parse_principal("a b").is_err());
    }
}
