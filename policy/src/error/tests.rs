#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

#[test]
fn display_puts_caret_under_column() {
    let e = LoadError::at(
        "p.yaml",
        "a: 1\n  bad: x\n",
        2,
        3,
        "unknown field `bad`".into(),
    );
    assert_eq!(
        e.to_string(),
        "p.yaml:2:3: unknown field `bad`\n    bad: x\n    ^\n"
    );
}

#[test]
fn caret_keeps_tabs_aligned() {
    let e = LoadError::at("p", "\tx: y", 1, 2, "m".into());
    assert_eq!(e.to_string(), "p:1:2: m\n  \tx: y\n  \t^\n");
}

#[test]
fn json_has_file_line_column_message() {
    let errs = LoadErrors::new(vec![LoadError::at("f", "x", 1, 1, "bad".into())]);
    let json = serde_json::to_string(&errs).unwrap();
    assert_eq!(
        json,
        r#"[{"file":"f","line":1,"column":1,"message":"bad"}]"#
    );
}
