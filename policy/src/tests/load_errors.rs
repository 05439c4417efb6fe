//! Every load error: where it points (file:line:column) and what it says.

use super::{doc, load_text, load_with};
use crate::{LoadOptions, Source, load};

/// Marks, in a case's text, the character the error must point at. Removed before loading.
const HERE: char = '»';

/// Splits a marked text into the text to load and the 1-based (line, column) of the marker.
fn marked(text: &str) -> (String, u64, u64) {
    let mut line = 1;
    let mut column = 1;
    for c in text.chars() {
        if c == HERE {
            return (text.replacen(HERE, "", 1), line, column);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    panic!("no marker in case:\n{text}");
}

/// A document whose only rule is the flow mapping `{r}`.
fn rule(r: &str) -> String {
    doc("p", &format!("  rules:\n  - {{{r}}}\n"))
}

fn assert_single_error(text: &str, opts: &LoadOptions, fragment: &str) {
    let (clean, line, column) = marked(text);
    let errors = match load_with(&clean, opts) {
        Ok(_) => panic!("loaded, expected an error containing {fragment:?}:\n{clean}"),
        Err(e) => e,
    };
    assert_eq!(
        errors.len(),
        1,
        "expected one error for:\n{clean}\ngot:\n{errors}"
    );
    let e = &errors.errors()[0];
    assert_eq!(e.file, "test.yaml");
    assert_eq!(
        (e.line, e.column),
        (line, column),
        "wrong position for {fragment:?}:\n{errors}"
    );
    assert!(
        e.message.contains(fragment),
        "message {:?} lacks {fragment:?}",
        e.message
    );
    // The block shows the offending line and a caret under the column.
    let shown = e.to_string();
    let clean_line = clean
        .lines()
        .nth(usize::try_from(line - 1).unwrap())
        .unwrap();
    assert!(shown.contains(&format!("\n  {clean_line}\n")), "{shown}");
    let caret = format!(
        "\n  {}^\n",
        " ".repeat(usize::try_from(column - 1).unwrap())
    );
    assert!(shown.ends_with(&caret), "{shown:?}");
}

#[test]
fn every_load_error_names_its_location_and_cause() {
    let head = "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\n";
    let cases: Vec<(String, &str)> = vec![
        // Structure and unknown fields.
        (
            format!("{}»bogus: 1\n", doc("p", "  rules: [{}]\n")),
            "unknown field `bogus` in the document",
        ),
        (doc("p", "  »actions: ALLOW\n"), "unknown field `actions` in `spec`"),
        (rule("»form: []"), "unknown field `form` in `spec.rules[0]`"),
        (
            rule("from: [{source: {»principal: [x]}}]"),
            "unknown field `principal` in `spec.rules[0].from[0].source`; expected one of: principals",
        ),
        (
            rule("to: [{operation: {»method: [GET]}}]"),
            "unknown field `method` in `spec.rules[0].to[0].operation`",
        ),
        (
            rule("when: [{key: source.ip, values: [10.0.0.1], »valeus: [x]}]"),
            "unknown field `valeus` in `spec.rules[0].when[0]`",
        ),
        (
            format!("»status: {{}}\n{}", doc("p", "  rules: [{}]\n")),
            "`status` is not supported by Picket: it is written by the cluster",
        ),
        ("»- a\n- b\n".to_owned(), "a policy document: expected a mapping, found a list"),
        (doc("p", "  rules: »{}\n"), "`spec.rules`: expected a list, found a mapping"),
        // Header fields.
        (
            "apiVersion: »security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {}\n".to_owned(),
            "unsupported apiVersion `security.istio.io/v2`",
        ),
        (
            "apiVersion: picket.dev/v1\nkind: »PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec: {}\n".to_owned(),
            "unsupported kind `PeerAuthentication`",
        ),
        (
            format!("{head}metadata: »{{namespace: shop}}\nspec: {{}}\n"),
            "missing required field `metadata.name`",
        ),
        (
            format!("»{head}metadata: {{name: p, namespace: shop}}\n"),
            "missing required field `spec`",
        ),
        (
            format!("{head}metadata: {{name: p, namespace: »Shop}}\nspec: {{}}\n"),
            "`Shop` is not a valid namespace",
        ),
        (
            format!("{head}metadata: {{name: »My_Policy, namespace: shop}}\nspec: {{}}\n"),
            "`My_Policy` is not a valid name",
        ),
        (
            format!("{head}metadata: {{name: p, namespace: shop, »uid: abc}}\nspec: {{}}\n"),
            "`metadata.uid` is not supported by Picket: it is set by the Kubernetes API server",
        ),
        (
            format!(
                "{head}metadata:\n  name: »p\n  namespace: shop\n  annotations: {{istio.io/dry-run: \"yes\"}}\nspec: {{}}\n"
            ),
            "annotation `istio.io/dry-run` must be \"true\" or \"false\"",
        ),
        (
            format!(
                "{head}metadata:\n  name: p\n  namespace: shop\n  annotations: {{istio.io/dry-run: \"true\"}}\nspec:\n  mode: »enforce\n  rules: [{{}}]\n"
            ),
            "contradicts the annotation `istio.io/dry-run`",
        ),
        // Action and mode.
        (
            doc("p", "  action: »CUSTOM\n  rules: [{}]\n"),
            "`spec.action: CUSTOM` is not supported by Picket",
        ),
        (
            doc("p", "  action: ALLOW\n  »provider: {name: ext-authz}\n  rules: [{}]\n"),
            "`spec.provider` is not supported by Picket",
        ),
        (
            doc("p", "  »targetRefs: [{kind: Gateway, name: gw}]\n  rules: [{}]\n"),
            "`spec.targetRefs` is not supported by Picket",
        ),
        (
            doc("p", "  »targetRef: {kind: Gateway, name: gw}\n  rules: [{}]\n"),
            "`spec.targetRef` is not supported by Picket",
        ),
        (doc("p", "  action: »allow\n  rules: [{}]\n"), "unknown action `allow`"),
        (doc("p", "  mode: »dryrun\n  rules: [{}]\n"), "unknown mode `dryrun`"),
        (
            doc("p", "  action: »DENY\n"),
            "a DENY policy without rules never matches anything",
        ),
        (
            doc("p", "  action: »AUDIT\n  rules: []\n"),
            "an AUDIT policy without rules never matches anything",
        ),
        (
            doc("p", "  action: AUDIT\n  mode: »dry-run\n  rules: [{}]\n"),
            "`dry-run` has no meaning",
        ),
        (
            doc("p", "  selector: {matchLabels: {version: »2}}\n  rules: [{}]\n"),
            "`spec.selector.matchLabels.version`: expected a string, found a number (2)",
        ),
        // Empty parts.
        (rule("from: »[]"), "`spec.rules[0].from` is empty"),
        (rule("to: »[]"), "`spec.rules[0].to` is empty"),
        (rule("when: »[]"), "`spec.rules[0].when` is empty"),
        (
            rule("from: [{source: »{}}]"),
            "`spec.rules[0].from[0].source` has no fields",
        ),
        (
            rule("to: [{operation: »{}}]"),
            "`spec.rules[0].to[0].operation` has no fields",
        ),
        (
            rule("from: [»{}]"),
            "missing required field `spec.rules[0].from[0].source`",
        ),
        (
            rule("from: [{source: {principals: »[]}}]"),
            "`spec.rules[0].from[0].source.principals` is empty",
        ),
        (
            rule("from: [{source: {namespaces: [»\"\"]}}]"),
            "empty value",
        ),
        (rule("when: [»{key: source.ip}]"), "needs `values`, `notValues` or both"),
        // Contradictions.
        (
            rule("to: [{operation: {methods: [GET, POST], notMethods: [»GET]}}]"),
            "`GET` is listed in both `methods` and `notMethods`",
        ),
        (
            rule(
                "from: [{source: {principals: [\"cluster.local/ns/a/sa/b\"], notPrincipals: [»\"spiffe://cluster.local/ns/a/sa/b\"]}}]",
            ),
            "is listed in both `principals` and `notPrincipals`",
        ),
        (
            rule("to: [{operation: {ports: [8080], notPorts: [»\"8080\"]}}]"),
            "`8080` is listed in both `ports` and `notPorts`",
        ),
        (
            rule("to: [{operation: {hosts: [Orders], notHosts: [»orders]}}]"),
            "`orders` is listed in both `hosts` and `notHosts`",
        ),
        (
            rule("from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [»10.0.0.0/8]}}]"),
            "listed in both `ipBlocks` and `notIpBlocks`",
        ),
        (
            rule("when: [{key: \"request.headers[x-tenant]\", values: [acme], notValues: [»acme]}]"),
            "`acme` is listed in both `values` and `notValues`",
        ),
        // Invalid values.
        (
            rule("from: [{source: {ipBlocks: [»10.0.0.1/8]}}]"),
            "`10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?",
        ),
        (
            rule("from: [{source: {notIpBlocks: [»300.0.0.0/8]}}]"),
            "`300.0.0.0/8` is not an IP address or CIDR block",
        ),
        (
            rule("from: [{source: {ipBlocks: [»\"2001:db8::/129\"]}}]"),
            "prefix length 129 is longer than 128 bits",
        ),
        (rule("to: [{operation: {ports: [»0]}}]"), "`0` is not a port number"),
        (rule("to: [{operation: {ports: [»70000]}}]"), "`70000` is not a port number"),
        (rule("to: [{operation: {notPorts: [»http]}}]"), "`http` is not a port number"),
        (
            rule("to: [{operation: {methods: [»get]}}]"),
            "`get` is not an uppercase HTTP method",
        ),
        (
            rule("to: [{operation: {paths: [»/a*b]}}]"),
            "`*` is allowed only alone, at the start or at the end of a value",
        ),
        (
            rule("from: [{source: {principals: [»\"cluster.local/*/sa/x\"]}}]"),
            "`*` is allowed only alone",
        ),
        (
            rule("to: [{operation: {paths: [»/api/../admin]}}]"),
            "`/api/../admin` can never match",
        ),
        (
            rule("to: [{operation: {notPaths: [»\"/a?b=1\"]}}]"),
            "paths are matched without query or fragment",
        ),
        (
            rule("to: [{operation: {hosts: [»\"a b\"]}}]"),
            "host `a b` has characters a host name cannot have",
        ),
        (
            rule("to: [{operation: {hosts: [»\"orders:0\"]}}]"),
            "omit the port to match any port",
        ),
        (
            rule("from: [{source: {principals: [»8080]}}]"),
            "expected a string, found a number (8080)",
        ),
        (
            rule("from: [{source: {principals: »frontend}}]"),
            "expected a list, found a string",
        ),
        // `when` keys and values.
        (
            rule("when: [{key: »source.port, values: [\"1\"]}]"),
            "unknown key `source.port`; supported keys: request.headers[NAME]",
        ),
        (
            rule("when: [{key: »\"request.auth.subject\", values: [x]}]"),
            "`request.auth.subject` is not supported by Picket: the JWT attributes are",
        ),
        (
            rule("when: [{key: »\"request.auth.claims[a]x\", values: [x]}]"),
            "expected `[claim]` after `request.auth.claims`",
        ),
        (
            rule("when: [{key: »remote.ip, values: [10.0.0.1]}]"),
            "`remote.ip` is not supported by Picket",
        ),
        (
            rule("when: [{key: »destination.ip, values: [10.0.0.1]}]"),
            "`destination.ip` is not supported by Picket",
        ),
        (
            rule("when: [{key: »\"request.headers[a b]\", values: [x]}]"),
            "`a b` is not a header name",
        ),
        (
            rule("when: [{key: destination.port, values: [»http]}]"),
            "`http` is not a port number",
        ),
        (
            rule("when: [{key: source.ip, values: [»10.0.0.300]}]"),
            "is not an IP address or CIDR block",
        ),
        (
            rule("when: [{key: source.namespace, values: [»Shop]}]"),
            "`Shop` is not a namespace",
        ),
        (
            rule("when: [{key: connection.sni, values: [»\"a/b\"]}]"),
            "`a/b` is not a server name",
        ),
        // Unsupported Istio source fields.
        (
            rule("from: [{source: {requestPrincipals: [»issuer]}}]"),
            "`issuer` is not a request principal",
        ),
        (
            rule("from: [{source: {»remoteIpBlocks: [10.0.0.0/8]}}]"),
            "`spec.rules[0].from[0].source.remoteIpBlocks` is not supported by Picket",
        ),
        (
            rule("from: [{source: {»notRemoteIpBlocks: [10.0.0.0/8]}}]"),
            "`spec.rules[0].from[0].source.notRemoteIpBlocks` is not supported by Picket",
        ),
        // YAML itself.
        (
            doc("p", "  rules: [{}]\n  »rules: [{}]\n"),
            "duplicate mapping key: rules",
        ),
        (
            doc("p", "  rules:\n  - from: &f [{source: {principals: [x]}}]\n    to: [{operation: {ports: [80]}}]\n  - »<<: {from: *f}\n"),
            "merge",
        ),
    ];
    assert!(cases.len() >= 40);
    for (text, fragment) in &cases {
        assert_single_error(text, &LoadOptions::default(), fragment);
    }
}

#[test]
fn http_only_fields_on_opaque_tcp_ports_are_rejected() {
    let opts = LoadOptions {
        opaque_tcp_ports: vec![5432, 6379],
        ..LoadOptions::default()
    };
    let cases = [
        (
            rule("to: [{operation: {ports: [5432], »methods: [GET]}}]"),
            "`spec.rules[0].to[0].operation.methods` can never match: it only applies to ports declared opaque TCP (5432)",
        ),
        (
            rule("to: [{operation: {ports: [5432, 6379], »paths: [/x]}}]"),
            "opaque TCP (5432, 6379)",
        ),
        (
            rule(
                "to: [{operation: {ports: [5432]}}], when: [{key: »\"request.headers[x-a]\", values: [b]}]",
            ),
            "`spec.rules[0].when[0]` (request.headers[x-a]) can never match",
        ),
        (
            rule(
                "to: [{operation: {»hosts: [db]}}], when: [{key: destination.port, values: [\"5432\"]}]",
            ),
            "operation.hosts` can never match",
        ),
    ];
    for (text, fragment) in &cases {
        assert_single_error(text, &opts, fragment);
    }
    // A rule that may also see an HTTP port is fine, and so is any rule without opaque ports.
    let ok = [
        rule("to: [{operation: {ports: [5432, 8080], methods: [GET]}}]"),
        rule("to: [{operation: {ports: [5432]}}, {operation: {ports: [8080], methods: [GET]}}]"),
        rule("to: [{operation: {methods: [GET]}}]"),
        rule("to: [{operation: {ports: [5432]}}]"),
    ];
    for text in &ok {
        assert!(load_with(text, &opts).is_ok(), "{text}");
    }
}

#[test]
fn reports_file_line_column_and_caret() {
    let text = doc(
        "p",
        "  action: DENY\n  rules:\n  - to: [{operation: {methods: [get]}}]\n",
    );
    let errors = load_text(&text).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "test.yaml:7:33: `spec.rules[0].to[0].operation.methods[0]`: `get` is not an \
             uppercase HTTP method; methods are case-sensitive (write `GET`)\n    \
             - to: [{{operation: {{methods: [get]}}}}]\n  {}^\n",
            " ".repeat(32)
        )
    );
}

#[test]
fn errors_serialize_as_json_objects() {
    let errors = load_text(&doc("p", "  bogus: 1\n")).unwrap_err();
    let json: serde_json::Value = serde_json::to_value(&errors).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "file": "test.yaml",
            "line": 5,
            "column": 3,
            "message": "unknown field `bogus` in `spec`; expected one of: selector, action, mode, direction, rules",
        }])
    );
}

#[test]
fn all_errors_of_all_files_are_collected_in_order() {
    let first = format!(
        "{}---\n{}---\n{}",
        doc("a", "  rules: [{}]\n  bogus: 1\n"),
        doc("b", "  rules: [{}]\n"),
        doc(
            "c",
            "  action: NOPE\n  rules:\n  - to: [{operation: {ports: [0]}}]\n"
        ),
    );
    let second = doc("d", "  rules: [{from: []}]\n");
    let errors = load(
        &[
            Source {
                name: "one.yaml",
                text: &first,
            },
            Source {
                name: "two.yaml",
                text: &second,
            },
        ],
        &LoadOptions::default(),
    )
    .unwrap_err();
    let located: Vec<(String, u64)> = errors.iter().map(|e| (e.file.clone(), e.line)).collect();
    assert_eq!(
        located,
        vec![
            ("one.yaml".to_owned(), 6),
            ("one.yaml".to_owned(), 18),
            ("one.yaml".to_owned(), 20),
            ("two.yaml".to_owned(), 5),
        ],
        "{errors}"
    );
    assert_eq!(errors.to_string().matches("^\n").count(), 4);
}

#[test]
fn a_policy_defined_twice_is_an_error_at_the_second_definition() {
    let a = doc("p", "  rules: [{}]\n");
    let errors = load(
        &[
            Source {
                name: "a.yaml",
                text: &a,
            },
            Source {
                name: "b.yaml",
                text: &a,
            },
        ],
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    let e = &errors.errors()[0];
    assert_eq!((e.file.as_str(), e.line, e.column), ("b.yaml", 3, 18));
    assert_eq!(
        e.message,
        "policy `shop/p` is already defined at a.yaml:3:18"
    );
}

#[test]
fn yaml_syntax_errors_have_a_location() {
    let errors = load_text(&doc("p", "  rules: [{}\n  action: DENY\n")).unwrap_err();
    let e = &errors.errors()[0];
    assert_eq!(e.file, "test.yaml");
    assert!(e.line >= 5, "{errors}");
    assert!(e.message.starts_with("invalid YAML: "), "{errors}");
}

#[test]
fn oversized_sources_are_rejected() {
    let opts = LoadOptions {
        max_file_bytes: 64,
        ..LoadOptions::default()
    };
    let errors = load_with(&doc("p", "  rules: [{}]\n"), &opts).unwrap_err();
    assert!(
        errors.errors()[0]
            .message
            .contains("over the limit of 64 bytes")
    );
}

#[test]
fn a_bad_document_fails_the_whole_load() {
    let text = format!(
        "{}---\n{}",
        doc("good", "  rules: [{}]\n"),
        doc("bad", "  x: 1\n")
    );
    assert!(load_text(&text).is_err());
}
