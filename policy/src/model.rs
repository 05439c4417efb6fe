//! The policy model as written (after validation), and its canonical YAML printing.
//!
//! Printing then parsing gives back an equal model: strings that YAML could read as something
//! else (numbers, booleans, null, values starting with `*`) are double-quoted.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Serialize;

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    /// A match allows the request (when no enforced DENY matches).
    #[serde(rename = "ALLOW")]
    Allow,
    /// A match denies the request.
    #[serde(rename = "DENY")]
    Deny,
    /// A match is recorded in `Decision::audit`; the verdict never changes.
    #[serde(rename = "AUDIT")]
    Audit,
}

impl Action {
    /// `ALLOW`, `DENY` or `AUDIT`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a policy is enforced or only evaluated and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Mode {
    /// The policy takes part in the verdict.
    #[serde(rename = "enforce")]
    Enforce,
    /// The policy is evaluated and recorded as a shadow verdict; it never changes the verdict.
    #[serde(rename = "dry-run")]
    DryRun,
}

impl Mode {
    /// `enforce` or `dry-run`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which connections a policy decides (`spec.direction`, a Picket extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum Direction {
    /// Requests and connections to the selected workloads (the default; Istio's meaning).
    #[default]
    #[serde(rename = "inbound")]
    Inbound,
    /// The selected workloads' own connections to destinations outside the mesh
    /// (passthrough), by destination address, port and the name the client asked for.
    #[serde(rename = "egress")]
    Egress,
}

impl Direction {
    /// `inbound` or `egress`, as written in policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `apiVersion` a document was written with; printing keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    Picket,
    IstioV1,
    IstioV1beta1,
}

impl ApiVersion {
    pub(crate) const ALL: [ApiVersion; 3] = [
        ApiVersion::Picket,
        ApiVersion::IstioV1,
        ApiVersion::IstioV1beta1,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ApiVersion::Picket => "picket.dev/v1",
            ApiVersion::IstioV1 => "security.istio.io/v1",
            ApiVersion::IstioV1beta1 => "security.istio.io/v1beta1",
        }
    }
}

/// The annotation Istio uses for dry-run; Picket honours it on every document.
pub(crate) const ISTIO_DRY_RUN: &str = "istio.io/dry-run";

/// One AuthorizationPolicy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) api_version: ApiVersion,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) annotations: BTreeMap<String, String>,
    /// `selector.matchLabels`; empty selects every workload of the namespace.
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) action: Action,
    /// `spec.mode` when written; the effective mode is [`Policy::mode`].
    pub(crate) spec_mode: Option<Mode>,
    /// `spec.direction`: inbound unless written `egress`.
    pub(crate) direction: Direction,
    pub(crate) rules: Vec<Rule>,
}

impl Policy {
    /// `spec.mode`, else the `istio.io/dry-run` annotation, else enforce. (Load rejects a
    /// document where the two disagree.)
    pub(crate) fn mode(&self) -> Mode {
        if let Some(mode) = self.spec_mode {
            return mode;
        }
        match self.annotations.get(ISTIO_DRY_RUN).map(String::as_str) {
            Some("true") => Mode::DryRun,
            _ => Mode::Enforce,
        }
    }
}

/// One rule. Empty lists mean the part is absent (a present but empty list is a load error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) from: Vec<PeerSpec>,
    pub(crate) to: Vec<OperationSpec>,
    pub(crate) when: Vec<ConditionSpec>,
}

/// `from[].source`. Empty lists are absent fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerSpec {
    pub(crate) principals: Vec<String>,
    pub(crate) not_principals: Vec<String>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) not_namespaces: Vec<String>,
    pub(crate) ip_blocks: Vec<String>,
    pub(crate) not_ip_blocks: Vec<String>,
    pub(crate) request_principals: Vec<String>,
    pub(crate) not_request_principals: Vec<String>,
}

/// `to[].operation`. Empty lists are absent fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OperationSpec {
    pub(crate) hosts: Vec<String>,
    pub(crate) not_hosts: Vec<String>,
    pub(crate) ports: Vec<u16>,
    pub(crate) not_ports: Vec<u16>,
    pub(crate) methods: Vec<String>,
    pub(crate) not_methods: Vec<String>,
    pub(crate) paths: Vec<String>,
    pub(crate) not_paths: Vec<String>,
}

/// One `when` condition. Ports (for `destination.port`) are kept as their decimal text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConditionSpec {
    pub(crate) key: String,
    pub(crate) values: Vec<String>,
    pub(crate) not_values: Vec<String>,
}

impl Policy {
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
                kind: "AuthorizationPolicy",
                name: &self.name,
                namespace: &self.namespace,
                labels: &self.labels,
                annotations: &self.annotations,
                selector: &self.selector,
            },
        )?;
        writeln!(out, "  action: {}", self.action)?;
        if let Some(mode) = self.spec_mode {
            writeln!(out, "  mode: {mode}")?;
        }
        if self.direction == Direction::Egress {
            writeln!(out, "  direction: egress")?;
        }
        if self.rules.is_empty() {
            return writeln!(out, "  rules: []");
        }
        writeln!(out, "  rules:")?;
        for rule in &self.rules {
            write_rule(out, rule)?;
        }
        Ok(())
    }
}

fn write_rule(out: &mut String, rule: &Rule) -> fmt::Result {
    if rule.from.is_empty() && rule.to.is_empty() && rule.when.is_empty() {
        return writeln!(out, "  - {{}}");
    }
    // The first key of the rule goes after the "- " marker, the others under it.
    let mut lead = "  - ";
    if !rule.from.is_empty() {
        writeln!(out, "{lead}from:")?;
        lead = "    ";
        for peer in &rule.from {
            writeln!(out, "    - source:")?;
            let fields: [(&str, &[String]); 8] = [
                ("principals", &peer.principals),
                ("notPrincipals", &peer.not_principals),
                ("requestPrincipals", &peer.request_principals),
                ("notRequestPrincipals", &peer.not_request_principals),
                ("namespaces", &peer.namespaces),
                ("notNamespaces", &peer.not_namespaces),
                ("ipBlocks", &peer.ip_blocks),
                ("notIpBlocks", &peer.not_ip_blocks),
            ];
            write_fields(out, &fields)?;
        }
    }
    if !rule.to.is_empty() {
        writeln!(out, "{lead}to:")?;
        lead = "    ";
        for op in &rule.to {
            writeln!(out, "    - operation:")?;
            let ports: Vec<String> = op.ports.iter().map(u16::to_string).collect();
            let not_ports: Vec<String> = op.not_ports.iter().map(u16::to_string).collect();
            let fields: [(&str, &[String]); 8] = [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("ports", &ports),
                ("notPorts", &not_ports),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
            ];
            write_fields(out, &fields)?;
        }
    }
    if !rule.when.is_empty() {
        writeln!(out, "{lead}when:")?;
        for cond in &rule.when {
            writeln!(out, "    - key: {}", scalar(&cond.key))?;
            if !cond.values.is_empty() {
                writeln!(out, "      values: {}", flow_list(&cond.values))?;
            }
            if !cond.not_values.is_empty() {
                writeln!(out, "      notValues: {}", flow_list(&cond.not_values))?;
            }
        }
    }
    Ok(())
}

fn write_fields(out: &mut String, fields: &[(&str, &[String])]) -> fmt::Result {
    for (name, values) in fields {
        if !values.is_empty() {
            writeln!(out, "        {name}: {}", flow_list(values))?;
        }
    }
    Ok(())
}

/// The parts every canonical document starts with: `apiVersion`, `kind`, `metadata` and the
/// selector under `spec`.
pub(crate) struct Header<'a> {
    pub(crate) api_version: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) name: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) annotations: &'a BTreeMap<String, String>,
    pub(crate) selector: &'a BTreeMap<String, String>,
}

/// Writes `h` as the opening of a canonical document, up to and including `spec.selector`.
pub(crate) fn write_header(out: &mut String, h: Header<'_>) -> fmt::Result {
    writeln!(out, "apiVersion: {}", h.api_version)?;
    writeln!(out, "kind: {}", h.kind)?;
    writeln!(out, "metadata:")?;
    writeln!(out, "  name: {}", scalar(h.name))?;
    writeln!(out, "  namespace: {}", scalar(h.namespace))?;
    write_string_map(out, "  ", "labels", h.labels)?;
    write_string_map(out, "  ", "annotations", h.annotations)?;
    writeln!(out, "spec:")?;
    if !h.selector.is_empty() {
        writeln!(out, "  selector:")?;
        write_string_map(out, "    ", "matchLabels", h.selector)?;
    }
    Ok(())
}

pub(crate) fn write_string_map(
    out: &mut String,
    indent: &str,
    name: &str,
    map: &BTreeMap<String, String>,
) -> fmt::Result {
    if map.is_empty() {
        return Ok(());
    }
    writeln!(out, "{indent}{name}:")?;
    for (k, v) in map {
        writeln!(out, "{indent}  {}: {}", scalar(k), scalar(v))?;
    }
    Ok(())
}

pub(crate) fn flow_list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
    format!("[{}]", items.join(", "))
}

/// A plain scalar when it cannot be read back as anything but this string, else double-quoted.
pub(crate) fn scalar(s: &str) -> String {
    let mut bytes = s.bytes();
    let plain = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
        && s.parse::<f64>().is_err();
    if plain { s.to_owned() } else { quoted(s) }
}

/// A YAML double-quoted scalar. Everything outside YAML's printable set, and the characters
/// some readers take for line breaks or byte-order marks, is escaped, so reading it back gives
/// the same string.
pub(crate) fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}'
                if !matches!(c, '\u{2028}' | '\u{2029}') =>
            {
                out.push(c)
            }
            c if u32::from(c) > 0xffff => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
