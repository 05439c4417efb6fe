//! The one place YAML is parsed: policy text becomes a tree of values that each remember their
//! line and column, so every later check can point at what it rejects.
//!
//! Parsing is strict: duplicate keys, merge keys (`<<`) and unknown tags are errors, booleans are
//! YAML 1.2 only (`yes` stays a string), and budgets bound documents, nodes, depth and alias
//! expansion so a hostile file cannot exhaust memory.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::error::LoadError;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

/// A YAML value with the position where it is written.
#[derive(Debug, Clone)]
pub(crate) struct Yaml {
    pub(crate) pos: Pos,
    pub(crate) value: Value,
}

/// A mapping key with its position.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) pos: Pos,
    pub(crate) name: String,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(Key, Yaml)>),
}

impl Value {
    /// A short noun for error messages ("expected a list, found a string").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as YAML would print it, for "quote it" hints.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            _ => None,
        }
    }
}

/// Limits on one source file, on top of the caller's byte limit.
const MAX_DEPTH: usize = 32;
const MAX_DOCUMENTS: usize = 100_000;
const MAX_NODES: usize = 4_000_000;
const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;
const MAX_ALIAS_STACK_DEPTH: usize = 16;

/// Parses every document of `text`, skipping empty ones. This is the only function in the crate
/// that reads YAML.
pub(crate) fn parse_documents(
    file: &str,
    text: &str,
    max_bytes: usize,
) -> Result<Vec<Yaml>, LoadError> {
    if text.len() > max_bytes {
        return Err(LoadError::at(
            file,
            text,
            1,
            1,
            format!(
                "file is {} bytes, over the limit of {max_bytes} bytes",
                text.len()
            ),
        ));
    }
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options.merge_keys = serde_saphyr::MergeKeyPolicy::Error;
    options.reject_unsupported_tags = true;
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_NODES;
    budget.max_reader_input_bytes = Some(max_bytes);
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAYED_EVENTS;
    options.alias_limits.max_replay_stack_depth = MAX_ALIAS_STACK_DEPTH;

    let docs: Vec<Spanned<Node>> = serde_saphyr::from_str_multiple_with_options(text, options)
        .map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            LoadError::at(
                file,
                text,
                line,
                column,
                format!("invalid YAML: {}", picket_common::yaml::error_message(&e)),
            )
        })?;
    Ok(docs
        .into_iter()
        .map(Yaml::from)
        .filter(|d| !matches!(d.value, Value::Null))
        .collect())
}

/// The raw tree as the parser hands it over; converted into [`Yaml`] right away.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

fn pos(location: &serde_saphyr::Location) -> Pos {
    Pos {
        line: location.line().max(1),
        column: location.column().max(1),
    }
}

impl From<Spanned<Node>> for Yaml {
    fn from(node: Spanned<Node>) -> Yaml {
        let value = match node.value {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Int(i) => Value::Int(i),
            Node::Float(f) => Value::Float(f),
            Node::Str(s) => Value::Str(s),
            Node::Seq(items) => Value::Seq(items.into_iter().map(Yaml::from).collect()),
            Node::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            Key {
                                pos: pos(&k.referenced),
                                name: k.value,
                            },
                            Yaml::from(v),
                        )
                    })
                    .collect(),
            ),
        };
        Yaml {
            pos: pos(&node.referenced),
            value,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

#[cfg(test)]
mod tests;
