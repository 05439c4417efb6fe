//! A document: `apiVersion`, `kind`, `metadata` and `spec`.

use std::collections::BTreeMap;

use super::values::*;
use super::*;

impl Decoder<'_> {
    pub(super) fn document_inner(&mut self, doc: &Yaml) -> Option<Decoded> {
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

        let annotation_mode = self.dry_run_annotation(&annotations, name_pos);
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
            direction: spec.direction,
            rules: spec.rules.iter().map(|(r, _)| r.clone()).collect(),
        };
        self.check_effect(
            &policy,
            spec.action.1.unwrap_or(doc.pos),
            spec.mode.map_or(name_pos, |(_, p)| p),
        );
        Some(Decoded {
            policy,
            rules: spec.rules.into_iter().map(|(_, c)| c).collect(),
            pos: doc.pos,
            name_pos,
        })
    }

    /// Istio's dry-run annotation, `"true"` or `"false"`.
    fn dry_run_annotation(
        &mut self,
        annotations: &BTreeMap<String, String>,
        name_pos: Pos,
    ) -> Option<Mode> {
        match annotations.get(ISTIO_DRY_RUN).map(String::as_str) {
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
        }
    }

    /// Refuses a policy that can have no effect: DENY or AUDIT without rules, a dry-run AUDIT.
    fn check_effect(&mut self, policy: &Policy, action_pos: Pos, mode_pos: Pos) {
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
                mode_pos,
                "an AUDIT policy never changes the verdict, so `dry-run` has no meaning for it; \
                 remove the mode",
            );
        }
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
        let selector = self.selector(f.get("selector"));
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
        let issuer = self.issuer(&f, node, path);
        let audiences = self.patterns(f.get("audiences"), &p("audiences"), |s: &str| {
            if s.is_empty() || s.chars().any(char::is_control) {
                Err(format!(
                    "`{s}` is not an audience (non-empty, no control characters)"
                ))
            } else {
                Ok(s.to_owned())
            }
        });
        let jwks = self.jwks_source(&f, node, path);
        let from_headers = match f.get("fromHeaders") {
            None => Vec::new(),
            Some(n) => self.list(n, &p("fromHeaders"), Self::token_header),
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
        let forward_original_token = f
            .get("forwardOriginalToken")
            .is_some_and(|n| self.boolean(n, &p("forwardOriginalToken")));
        let output_claim_to_headers = match f.get("outputClaimToHeaders") {
            None => Vec::new(),
            Some(n) => self.list(n, &p("outputClaimToHeaders"), Self::claim_to_header),
        };
        Some(JwtRule {
            issuer: issuer?,
            audiences: values(&audiences),
            jwks: jwks?,
            from_headers,
            from_params: values(&from_params),
            output_payload_to_header,
            forward_original_token,
            output_claim_to_headers,
        })
    }

    /// A JWT rule's `issuer`: a non-empty string without control characters.
    fn issuer(&mut self, f: &Fields<'_>, node: &Yaml, path: &str) -> Option<String> {
        let n = self.required(f, node, path, "issuer")?;
        let iss = self.string(n, &format!("{path}.issuer"))?;
        if iss.is_empty() || iss.chars().any(char::is_control) {
            self.error(
                n.pos,
                format!(
                    "`{path}.issuer`: an issuer is a non-empty string without control characters"
                ),
            );
        }
        Some(iss.to_owned())
    }

    /// Where a JWT rule's keys come from: exactly one of `jwksUri` and `jwks`.
    fn jwks_source(&mut self, f: &Fields<'_>, node: &Yaml, path: &str) -> Option<JwksSource> {
        match (f.get("jwksUri"), f.get("jwks")) {
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
                let uri = self.string(n, &format!("{path}.jwksUri"))?;
                match check_jwks_uri(uri) {
                    Ok(()) => Some(JwksSource::Uri(uri.to_owned())),
                    Err(why) => {
                        self.error(n.pos, format!("`{path}.jwksUri`: {why}"));
                        None
                    }
                }
            }
            (None, Some(n)) => {
                let text = self.string(n, &format!("{path}.jwks"))?;
                match check_inline_jwks(text) {
                    Ok(()) => Some(JwksSource::Inline(text.to_owned())),
                    Err(why) => {
                        self.error(n.pos, format!("`{path}.jwks`: {why}"));
                        None
                    }
                }
            }
        }
    }

    /// A boolean field: `true` or `false` (anything else is an error, read as false).
    fn boolean(&mut self, n: &Yaml, path: &str) -> bool {
        match &n.value {
            Value::Bool(b) => *b,
            other => {
                self.error(
                    n.pos,
                    format!("`{path}`: expected true or false, found {}", other.kind()),
                );
                false
            }
        }
    }

    /// One item of `fromHeaders`: a header name and the prefix before the token.
    fn token_header(&mut self, item: &Yaml, item_path: &str) -> Option<TokenHeader> {
        let hf = self.fields(item, item_path, FROM_HEADER_FIELDS, &[])?;
        let name_node = self.required(&hf, item, item_path, "name")?;
        let name = self.string(name_node, &format!("{item_path}.name"))?;
        if let Err(why) = check_header_name(name) {
            self.error(name_node.pos, format!("`{item_path}.name`: {why}"));
            return None;
        }
        let prefix = match hf.get("prefix") {
            None => String::new(),
            Some(pn) => {
                let prefix = self.string(pn, &format!("{item_path}.prefix"))?;
                if prefix.chars().any(char::is_control) {
                    self.error(
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
    }

    /// One item of `outputClaimToHeaders`: a header to set and the claim it carries.
    fn claim_to_header(&mut self, item: &Yaml, item_path: &str) -> Option<ClaimToHeader> {
        let cf = self.fields(item, item_path, CLAIM_TO_HEADER_FIELDS, &[])?;
        let header_node = self.required(&cf, item, item_path, "header");
        let claim_node = self.required(&cf, item, item_path, "claim");
        let header = header_node.and_then(|h| self.string(h, &format!("{item_path}.header")));
        let claim = claim_node.and_then(|c| self.string(c, &format!("{item_path}.claim")));
        let (header_node, claim_node, header, claim) = (header_node?, claim_node?, header?, claim?);
        if let Err(why) = check_output_header(header) {
            self.error(header_node.pos, format!("`{item_path}.header`: {why}"));
            return None;
        }
        if claim.is_empty()
            || claim.split('.').any(str::is_empty)
            || claim.chars().any(char::is_control)
        {
            self.error(
                claim_node.pos,
                format!("`{item_path}.claim`: `{claim}` is not a claim name (`sub`, or `realm.role` for a nested claim)"),
            );
            return None;
        }
        Some(ClaimToHeader {
            header: header.to_ascii_lowercase(),
            claim: claim.to_owned(),
        })
    }

    pub(super) fn api_version(&mut self, node: &Yaml) -> Option<ApiVersion> {
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
    pub(super) fn metadata(
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

    pub(super) fn spec(&mut self, node: &Yaml) -> Option<SpecParts> {
        let f = self.fields(node, "spec", SPEC_FIELDS, SPEC_UNSUPPORTED)?;
        let selector = self.selector(f.get("selector"));
        let action = match f.get("action") {
            None => (Action::Allow, None),
            Some(n) => (self.action(n).unwrap_or(Action::Allow), Some(n.pos)),
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
        let direction = match f.get("direction") {
            None => Direction::Inbound,
            Some(n) => match self.string(n, "spec.direction") {
                Some("inbound") => Direction::Inbound,
                Some("egress") => Direction::Egress,
                Some(other) => {
                    self.error(
                        n.pos,
                        format!(
                            "`spec.direction`: unknown direction `{other}`; expected inbound or \
                             egress"
                        ),
                    );
                    Direction::Inbound
                }
                None => Direction::Inbound,
            },
        };
        self.egress = direction == Direction::Egress;
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
        self.egress = false;
        Some(SpecParts {
            selector,
            action,
            mode,
            direction,
            rules,
        })
    }

    /// `spec.selector`: its `matchLabels` (none: every workload of the namespace).
    fn selector(&mut self, node: Option<&Yaml>) -> BTreeMap<String, String> {
        let Some(sel) = node else {
            return BTreeMap::new();
        };
        match self.fields(sel, "spec.selector", SELECTOR_FIELDS, &[]) {
            None => BTreeMap::new(),
            Some(sf) => sf
                .get("matchLabels")
                .map(|m| self.string_map(m, "spec.selector.matchLabels"))
                .unwrap_or_default(),
        }
    }

    /// `spec.action`: ALLOW, DENY or AUDIT (CUSTOM is refused).
    fn action(&mut self, n: &Yaml) -> Option<Action> {
        match self.string(n, "spec.action") {
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
        }
    }
}

/// `spec` once decoded: selector, (action, where), (mode, where), direction, rules.
pub(super) struct SpecParts {
    selector: BTreeMap<String, String>,
    action: (Action, Option<Pos>),
    mode: Option<(Mode, Pos)>,
    direction: Direction,
    rules: Vec<(Rule, CompiledRule)>,
}
