//! Policies as Kubernetes resources: `picket.dev/v1` and Istio's `security.istio.io`
//! `AuthorizationPolicy` objects, rendered as policy documents the policy loader reads, and
//! checked by the validating admission webhook (`POST /validate` of `picket injector serve`)
//! with the same loader as `picket policy check`.
//!
//! One rendering serves both uses: the controller sends sidecars the rendered text, and the
//! webhook checks it. The rendering keeps what a policy file may hold (`apiVersion`, `kind`,
//! `metadata.name`, `namespace`, `labels`, the `istio.io/dry-run` annotation, `spec`) and
//! leaves out what the API server writes (`uid`, `resourceVersion`, `managedFields`, ...),
//! which the loader refuses in files. It is indented JSON (which the YAML loader reads like
//! any policy file) whose every key and value is remembered with its field path, so an error
//! at a line and column of the rendered text names the field in the object
//! (`spec.rules[0].to[0].operation.methods[1]`).

use std::fmt::Write as _;

use picket_common::policies::ClusterPolicy;
use picket_policy::{LoadError, LoadOptions, Source};
use serde_json::{Map, Value, json};

/// The path the validating webhook configuration points at.
pub const VALIDATE_PATH: &str = "/validate";
/// The kind every policy object has.
pub const KIND: &str = "AuthorizationPolicy";
/// The groups whose `AuthorizationPolicy` objects are policies.
pub const GROUPS: [&str; 2] = ["picket.dev", "security.istio.io"];
/// The one annotation that changes a policy (the loader reads it; others are left out).
const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// A policy object rendered as a policy document, with the field path of every position.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `<apiVersion> AuthorizationPolicy <namespace>/<name>`: the source errors name.
    pub source: String,
    /// The document.
    pub text: String,
    /// (line, column, field path) of every key and value, in text order.
    places: Vec<(u64, u64, String)>,
}

/// Why an object cannot be rendered at all (the API server never stores such an object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(String);

/// One problem found in a policy object: what `picket policy check` says, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The field path in the object (`spec.rules[0].to[0].operation.methods[1]`), or empty
    /// when the problem is about the whole document.
    pub path: String,
    /// The source, line and column in the rendered document.
    pub source: String,
    /// 1-based line of the rendered document.
    pub line: u64,
    /// 1-based column of the rendered document.
    pub column: u64,
    /// The loader's message, word for word.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        // Most of the loader's messages already start with the field they are about.
        if !self.path.is_empty() && !self.message.contains(&format!("`{}", self.path)) {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl Rendered {
    /// The field path at `line:column`: the key or value written there, or else the nearest
    /// one before it.
    pub fn path_at(&self, line: u64, column: u64) -> &str {
        self.places
            .iter()
            .take_while(|(l, c, _)| (*l, *c) <= (line, column))
            .last()
            .map_or("", |(_, _, p)| p.as_str())
    }

    /// The rendered document as the controller sends it.
    pub fn into_cluster_policy(self) -> ClusterPolicy {
        ClusterPolicy {
            source: self.source,
            text: self.text,
        }
    }

    fn problem(&self, e: &LoadError) -> Problem {
        Problem {
            path: self.path_at(e.line, e.column).to_owned(),
            source: self.source.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        }
    }
}

/// The part of `object` a policy file may hold.
fn policy_part(object: &Value) -> Result<Value, RenderError> {
    let Some(all) = object.as_object() else {
        return Err(RenderError("the object is not a JSON object".into()));
    };
    let meta = object["metadata"].as_object().cloned().unwrap_or_default();
    let mut metadata = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(v) = meta.get(key) {
            metadata.insert(key.into(), v.clone());
        }
    }
    if let Some(dry_run) = meta
        .get("annotations")
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
    {
        metadata.insert("annotations".into(), json!({ DRY_RUN_ANNOTATION: dry_run }));
    }
    let mut out = Map::new();
    for key in ["apiVersion", "kind"] {
        if let Some(v) = all.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = all.get("spec") {
        out.insert("spec".into(), spec.clone());
    }
    Ok(Value::Object(out))
}

/// Renders a policy object (as the API server stores it, or as an admission review carries it).
pub fn render(object: &Value) -> Result<Rendered, RenderError> {
    let part = policy_part(object)?;
    let text_of = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let source = format!(
        "{} {} {}/{}",
        text_of(&part["apiVersion"]),
        text_of(&part["kind"]),
        text_of(&part["metadata"]["namespace"]),
        text_of(&part["metadata"]["name"]),
    );
    let mut writer = Writer {
        text: String::new(),
        line: 1,
        column: 1,
        places: Vec::new(),
    };
    writer.value(&part, "", 0);
    writer.text.push('\n');
    Ok(Rendered {
        source,
        text: writer.text,
        places: writer.places,
    })
}

/// Indented JSON that records where each key and value starts.
struct Writer {
    text: String,
    line: u64,
    column: u64,
    places: Vec<(u64, u64, String)>,
}

impl Writer {
    fn push(&mut self, s: &str) {
        for c in s.chars() {
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        self.text.push_str(s);
    }

    fn newline(&mut self, depth: usize) {
        self.push("\n");
        self.push(&"  ".repeat(depth));
    }

    fn mark(&mut self, path: &str) {
        self.places.push((self.line, self.column, path.to_owned()));
    }

    fn value(&mut self, value: &Value, path: &str, depth: usize) {
        self.mark(path);
        match value {
            Value::Object(map) if !map.is_empty() => {
                self.push("{");
                for (i, (key, v)) in map.iter().enumerate() {
                    if i > 0 {
                        self.push(",");
                    }
                    self.newline(depth + 1);
                    let at = field(path, key);
                    self.mark(&at);
                    self.push(&Value::String(key.clone()).to_string());
                    self.push(": ");
                    self.value(v, &at, depth + 1);
                }
                self.newline(depth);
                self.push("}");
            }
            Value::Array(items) if !items.is_empty() => {
                self.push("[");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        self.push(",");
                    }
                    self.newline(depth + 1);
                    self.value(v, &format!("{path}[{i}]"), depth + 1);
                }
                self.newline(depth);
                self.push("]");
            }
            other => self.push(&other.to_string()),
        }
    }
}

/// `path.key`, or `path["key"]` for a key that is not a plain name.
fn field(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, path.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{path}.{key}"),
        (false, _) => {
            let mut out = path.to_owned();
            let _ = write!(out, "[{}]", Value::String(key.to_owned()));
            out
        }
    }
}

/// Checks one policy object with the loader `picket policy check` uses: every problem, with
/// the loader's message, the field path and the place in the rendered document.
pub fn check(object: &Value, options: &LoadOptions) -> Result<(), Vec<Problem>> {
    let rendered = render(object).map_err(|e| {
        vec![Problem {
            path: String::new(),
            source: "object".into(),
            line: 1,
            column: 1,
            message: e.0,
        }]
    })?;
    let source = Source {
        name: &rendered.source,
        text: &rendered.text,
    };
    match picket_policy::load(&[source], options) {
        Ok(_) => Ok(()),
        Err(errors) => Err(errors.iter().map(|e| rendered.problem(e)).collect()),
    }
}

/// Answers one validating `AdmissionReview` (`admission.k8s.io/v1`): a policy object being
/// created or updated is allowed when it loads, and refused otherwise with every problem
/// (field path, place and message). Other operations and kinds are allowed. `Err` is a body
/// that is not an admission review (the caller answers 400).
pub fn review(body: &[u8], options: &LoadOptions) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(format!(
            "not an admission.k8s.io/v1 AdmissionReview: apiVersion {} kind {}",
            review["apiVersion"], review["kind"]
        ));
    }
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or("not an admission.k8s.io/v1 AdmissionReview: request.uid is missing")?;
    let is_policy = request["kind"]["kind"] == KIND
        && GROUPS
            .iter()
            .any(|g| request["kind"]["group"].as_str() == Some(g));
    let checked = matches!(request["operation"].as_str(), Some("CREATE" | "UPDATE"));
    let mut answer = json!({"uid": uid, "allowed": true});
    if is_policy
        && checked
        && let Err(problems) = check(&request["object"], options)
    {
        let message = refusal(&problems);
        tracing::info!(
            namespace = request["namespace"].as_str().unwrap_or(""),
            name = request["name"].as_str().unwrap_or(""),
            problems = problems.len(),
            "refusing a policy that does not load"
        );
        answer["allowed"] = json!(false);
        answer["status"] = json!({
            "code": 422,
            "reason": "Invalid",
            "message": message,
            "details": {"causes": problems.iter().map(|p| json!({
                "field": p.path,
                "message": p.message,
                "reason": "FieldValueInvalid",
            })).collect::<Vec<_>>()},
        });
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": answer,
    }))
}

/// The refusal message: one line per problem.
fn refusal(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    format!(
        "the policy cannot be enforced ({} problem{}):\n{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests;
