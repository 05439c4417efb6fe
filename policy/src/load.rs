//! [`load`]: every source parsed, decoded, checked for duplicate names and compiled into one
//! [`PolicySet`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::authn::RequestAuthentication;
use crate::decision::PolicyRef;
use crate::error::{LoadError, LoadErrors};
use crate::options::{LoadOptions, Source};
use crate::set::{self, PolicySet, PolicySummary};
use crate::{compile, decode, yaml};

/// Parses, checks and compiles every document of every source.
///
/// All errors are collected, in source order; any error fails the whole load, so a bad file
/// never half-applies. Policies are identified by namespace and name, which must be unique
/// across all sources.
pub fn load(sources: &[Source<'_>], opts: &LoadOptions) -> Result<PolicySet, LoadErrors> {
    let mut decoded = decode_sources(sources, opts);
    let duplicates = duplicate_names(sources, &decoded);
    decoded.errors.extend(duplicates);
    if !decoded.errors.is_empty() {
        return Err(LoadErrors::new(decoded.errors));
    }
    Ok(assemble(sources, opts, decoded))
}

/// What every source decodes to, with each item's source index, and every error in source
/// order.
struct DecodedSources {
    policies: Vec<(usize, decode::Decoded)>,
    authentications: Vec<(usize, RequestAuthentication, yaml::Pos)>,
    errors: Vec<LoadError>,
}

fn decode_sources(sources: &[Source<'_>], opts: &LoadOptions) -> DecodedSources {
    let mut out = DecodedSources {
        policies: Vec::new(),
        authentications: Vec::new(),
        errors: Vec::new(),
    };
    for (si, source) in sources.iter().enumerate() {
        match yaml::parse_documents(source.name, source.text, opts.max_file_bytes) {
            Err(e) => out.errors.push(e),
            Ok(docs) => {
                let mut decoder =
                    decode::Decoder::new(source.name, source.text, &opts.opaque_tcp_ports);
                for doc in &docs {
                    if let Some(d) = decoder.document(doc) {
                        out.policies.push((si, d));
                    }
                }
                out.authentications.extend(
                    decoder
                        .authentications
                        .drain(..)
                        .map(|(a, pos)| (si, a, pos)),
                );
                let mut file_errors = decoder.errors;
                file_errors.sort_by_key(|e| (e.line, e.column));
                out.errors.extend(file_errors);
            }
        }
    }
    out
}

/// Namespace and name identify a policy (and a RequestAuthentication): a second definition is
/// an error, not an override. One error per later definition, naming the first.
fn duplicate_names(sources: &[Source<'_>], decoded: &DecodedSources) -> Vec<LoadError> {
    let mut seen: HashMap<(&str, String, String), (usize, u64, u64)> = HashMap::new();
    let mut duplicates = Vec::new();
    let named = decoded
        .policies
        .iter()
        .map(|(si, d)| {
            (
                "policy",
                *si,
                &d.policy.namespace,
                &d.policy.name,
                d.name_pos,
            )
        })
        .chain(
            decoded
                .authentications
                .iter()
                .map(|(si, a, pos)| ("RequestAuthentication", *si, &a.namespace, &a.name, *pos)),
        );
    for (kind, si, namespace, name, pos) in named {
        let key = (kind, namespace.clone(), name.clone());
        let here = (si, pos.line, pos.column);
        if let Some((first_si, line, column)) = seen.get(&key) {
            let first = sources.get(*first_si).map(|s| s.name).unwrap_or("");
            let source = sources
                .get(si)
                .copied()
                .unwrap_or(Source { name: "", text: "" });
            duplicates.push(LoadError::at(
                source.name,
                source.text,
                here.1,
                here.2,
                format!(
                    "{} `{}/{}` is already defined at {first}:{line}:{column}",
                    key.0, key.1, key.2
                ),
            ));
        } else {
            seen.insert(key, here);
        }
    }
    duplicates
}

/// The set from sources that decoded without error: policies compiled and sorted by
/// reference, RequestAuthentications by namespace and name.
fn assemble(sources: &[Source<'_>], opts: &LoadOptions, decoded: DecodedSources) -> PolicySet {
    let mut policies: Vec<compile::CompiledPolicy> = decoded
        .policies
        .into_iter()
        .map(|(si, d)| {
            let source = sources.get(si).map(|s| s.name).unwrap_or("");
            let mode = d.policy.mode();
            compile::CompiledPolicy {
                reference: PolicyRef {
                    namespace: Arc::from(d.policy.namespace.as_str()),
                    name: Arc::from(d.policy.name.as_str()),
                },
                action: d.policy.action,
                mode,
                rules: d.rules,
                source: Arc::from(source),
                line: d.pos.line,
                model: d.policy,
            }
        })
        .collect();
    policies.sort_by(|a, b| a.reference.cmp(&b.reference));
    let summaries = policies
        .iter()
        .map(|p| PolicySummary {
            namespace: p.reference.namespace.to_string(),
            name: p.reference.name.to_string(),
            action: p.action,
            mode: p.mode,
            direction: p.model.direction,
            rules: p.rules.len(),
            source: p.source.to_string(),
            line: p.line,
        })
        .collect();
    let mut authentications: Vec<Arc<RequestAuthentication>> = decoded
        .authentications
        .into_iter()
        .map(|(_, a, _)| Arc::new(a))
        .collect();
    authentications.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    PolicySet {
        authentications,
        policies: policies.into_iter().map(Arc::new).collect(),
        summaries,
        root_namespace: opts.root_namespace.clone(),
        default_action: opts.default_action,
        hash: set::sources_hash(sources),
    }
}
