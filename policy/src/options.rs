//! The loader's settings ([`LoadOptions`], [`DefaultAction`]) and its input ([`Source`]): a
//! leaf the loader, the set and the evaluator use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What happens to a workload that no enforced ALLOW policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultAction {
    /// Deny (the shipped default): a workload without ALLOW policies takes no traffic.
    #[default]
    Deny,
    /// Allow, as Istio does.
    Allow,
    /// Allow, but the decision's `would_verdict` is deny, so the traffic a deny default would
    /// refuse can be seen before switching.
    AuditOnly,
}

impl DefaultAction {
    /// `deny`, `allow` or `audit-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultAction::Deny => "deny",
            DefaultAction::Allow => "allow",
            DefaultAction::AuditOnly => "audit-only",
        }
    }
}

impl fmt::Display for DefaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DefaultAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(DefaultAction::Deny),
            "allow" => Ok(DefaultAction::Allow),
            "audit-only" => Ok(DefaultAction::AuditOnly),
            other => Err(format!(
                "unknown default action `{other}`; expected deny, allow or audit-only"
            )),
        }
    }
}

/// How policies are loaded and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Policies in this namespace apply to workloads of every namespace. Default
    /// `picket-system`.
    pub root_namespace: String,
    /// The mesh default. Default [`DefaultAction::Deny`].
    pub default_action: DefaultAction,
    /// Ports that carry opaque TCP only: HTTP-only fields in a rule that can only apply to
    /// these ports are a load error.
    pub opaque_tcp_ports: Vec<u16>,
    /// The largest source accepted, in bytes. Default 1 MiB.
    pub max_file_bytes: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            root_namespace: "picket-system".to_owned(),
            default_action: DefaultAction::Deny,
            opaque_tcp_ports: Vec::new(),
            max_file_bytes: 1 << 20,
        }
    }
}

/// One policy source: a name for error messages (usually the file path) and its text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Shown in errors as `name:line:column`.
    pub name: &'a str,
    /// The YAML text; several documents separated by `---` are allowed.
    pub text: &'a str,
}
