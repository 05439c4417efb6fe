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
            self.error(
                kind.pos,
                format!("unsupported kind `{k}`: Picket reads AuthorizationPolicy documents only"),
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
}

/// `spec` once decoded: selector, (action, where), (mode, where), rules.
pub(super) struct SpecParts {
    selector: BTreeMap<String, String>,
    action: (Action, Option<Pos>),
    mode: Option<(Mode, Pos)>,
    rules: Vec<(Rule, CompiledRule)>,
}
