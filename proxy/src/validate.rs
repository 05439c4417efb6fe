//! The one sidecar configuration validator, [`Validator`]: the checks every section uses
//! (addresses, durations, positive numbers, one word of a set), each error pointing at the
//! value as `file:line:column`. The sections are methods on it beside their types:
//! `config/sections.rs` for the sidecar's, `telemetry/config.rs` for `telemetry:`. A leaf:
//! both import it, neither imports the other for it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::yaml::{self, Spanned, YamlError};

/// Validates raw configuration read from the file `source_name`.
pub(crate) struct Validator<'a> {
    pub(crate) source_name: &'a str,
}

/// Whether a duration may be zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zero {
    Allowed,
    Refused,
}

impl Validator<'_> {
    /// An error about the value `at`.
    pub(crate) fn err<T>(&self, at: &Spanned<T>, msg: impl Into<String>) -> YamlError {
        yaml::error_at(self.source_name, at, msg)
    }

    pub(crate) fn addr(&self, v: &Spanned<String>, field: &str) -> Result<SocketAddr, YamlError> {
        v.value.parse().map_err(|_| {
            self.err(
                v,
                format!("{field}: {:?} is not an IP:port address", v.value),
            )
        })
    }

    /// An address, or the built-in `default` (one of the `DEFAULT_*` constants).
    pub(crate) fn addr_or(
        &self,
        v: Option<&Spanned<String>>,
        default: &str,
        field: &str,
    ) -> Result<SocketAddr, YamlError> {
        match v {
            Some(v) => self.addr(v, field),
            None => default.parse().map_err(|_| YamlError {
                source_name: self.source_name.to_owned(),
                line: None,
                column: None,
                message: format!("{field}: built-in default {default} is invalid"),
            }),
        }
    }

    pub(crate) fn duration(
        &self,
        v: Option<&Spanned<String>>,
        default: Duration,
        field: &str,
        zero: Zero,
    ) -> Result<Duration, YamlError> {
        let Some(v) = v else { return Ok(default) };
        let d = picket_common::duration::parse(&v.value)
            .map_err(|e| self.err(v, format!("{field}: {e}")))?;
        if d.is_zero() && zero == Zero::Refused {
            return Err(self.err(v, format!("{field}: must be greater than zero")));
        }
        Ok(d)
    }

    pub(crate) fn positive(
        &self,
        v: Option<&Spanned<usize>>,
        default: usize,
        field: &str,
    ) -> Result<usize, YamlError> {
        match v {
            Some(v) if v.value == 0 => Err(self.err(v, format!("{field}: must be at least 1"))),
            Some(v) => Ok(v.value),
            None => Ok(default),
        }
    }

    /// One of a fixed set of words: `choices` pairs each word with its value.
    pub(crate) fn choice<T: Copy>(
        &self,
        v: Option<&Spanned<String>>,
        default: T,
        field: &str,
        choices: &[(&str, T)],
    ) -> Result<T, YamlError> {
        let Some(v) = v else { return Ok(default) };
        if let Some((_, value)) = choices.iter().find(|(word, _)| *word == v.value) {
            return Ok(*value);
        }
        let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
        let list = match words.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(self.err(v, format!("{field}: {:?} is not {list}", v.value)))
    }
}
