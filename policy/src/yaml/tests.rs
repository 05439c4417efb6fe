#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

fn parse(text: &str) -> Result<Vec<Yaml>, LoadError> {
    parse_documents("t.yaml", text, 1 << 20)
}

#[test]
fn values_keep_their_line_and_column() {
    let docs = parse("a: 1\nb:\n  - x\n").unwrap();
    let Value::Map(entries) = &docs[0].value else {
        panic!("not a map")
    };
    assert_eq!(entries[1].0.pos, Pos { line: 2, column: 1 });
    let Value::Seq(items) = &entries[1].1.value else {
        panic!("not a seq")
    };
    assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
}

#[test]
fn duplicate_keys_are_rejected_with_location() {
    let e = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
    assert_eq!((e.line, e.column), (3, 1));
    assert!(e.message.contains("duplicate mapping key"), "{}", e.message);
}

#[test]
fn yaml_11_booleans_stay_strings() {
    let docs = parse("a: yes\nb: true\n").unwrap();
    let Value::Map(entries) = &docs[0].value else {
        panic!("not a map")
    };
    assert!(matches!(entries[0].1.value, Value::Str(_)));
    assert!(matches!(entries[1].1.value, Value::Bool(true)));
}

#[test]
fn empty_documents_are_skipped() {
    let docs = parse("---\na: 1\n---\n---\nb: 2\n").unwrap();
    assert_eq!(docs.len(), 2);
}

#[test]
fn oversized_file_is_rejected() {
    let e = parse_documents("big.yaml", "a: 1234567890\n", 4).unwrap_err();
    assert!(e.message.contains("over the limit"), "{}", e.message);
}

#[test]
fn merge_keys_are_rejected() {
    let e = parse("base: &b {x: 1}\nother:\n  <<: *b\n").unwrap_err();
    assert!(
        e.message.contains("merge") || e.message.contains("<<"),
        "{}",
        e.message
    );
}

#[test]
fn alias_bombs_are_bounded() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    assert!(parse(&text).is_err());
}

#[test]
fn syntax_errors_point_at_the_problem() {
    let e = parse("a: [1\nb: 2\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.message.starts_with("invalid YAML: "), "{}", e.message);
    assert!(!e.message.contains("at line"), "{}", e.message);
}
