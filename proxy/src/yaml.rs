//! The one place the sidecar configuration touches the YAML library: [`parse`]. (Kubernetes
//! manifests are read by `inject`'s own parse and print functions, which follow kubectl's YAML
//! reading; policy files by picket-policy's.)
//!
//! Duplicate keys are errors, aliases and document size run under the library's budgets, and
//! booleans must be spelled `true`/`false`. Every error carries `file:line:column`.

use std::fmt;

use serde::de::DeserializeOwned;

/// A YAML document that could not be read into the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the text came from (a file path, or a description).
    pub source_name: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    /// What is wrong (the location is printed in front of it, once).
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.source_name, self.message),
            _ => write!(f, "{}: {}", self.source_name, self.message),
        }
    }
}

impl std::error::Error for YamlError {}

/// Parses one YAML document from `text` into `T`.
pub fn parse<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, YamlError> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let location = e.location();
        YamlError {
            source_name: source_name.to_owned(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            message: picket_common::yaml::error_message(&e),
        }
    })
}

/// A location inside a YAML source, for errors found after parsing.
pub type Spanned<T> = serde_saphyr::Spanned<T>;

/// An error about a value found after parsing, pointing at where the value was written.
pub fn error_at<T>(source_name: &str, at: &Spanned<T>, message: impl Into<String>) -> YamlError {
    YamlError {
        source_name: source_name.to_owned(),
        line: Some(at.referenced.line()),
        column: Some(at.referenced.column()),
        message: message.into(),
    }
}
