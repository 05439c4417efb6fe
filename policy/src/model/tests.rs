#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

#[test]
fn scalars_that_could_read_as_other_types_are_quoted() {
    assert_eq!(scalar("shop"), "shop");
    assert_eq!(scalar("orders-read"), "orders-read");
    assert_eq!(scalar("true"), "\"true\"");
    assert_eq!(scalar("yes"), "\"yes\"");
    assert_eq!(scalar("8080"), "\"8080\"");
    assert_eq!(scalar("inf"), "\"inf\"");
    assert_eq!(scalar("a:b"), "\"a:b\"");
    assert_eq!(scalar("*"), "\"*\"");
    assert_eq!(scalar(""), "\"\"");
}

#[test]
fn quoting_escapes_what_yaml_would_not_read_back() {
    assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
    assert_eq!(
        quoted("x\u{7f}\u{85}\u{2028}\u{feff}y"),
        r#""x\u007F\u0085\u2028\uFEFFy""#
    );
    assert_eq!(quoted("caf\u{e9} \u{1f600}"), "\"caf\u{e9} \u{1f600}\"");
}

#[test]
fn quoted_strings_read_back_unchanged() {
    let tricky = [
        "plain",
        "a\"b\\c",
        " lead and trail ",
        "tab\there\nnew\r",
        "\u{0}\u{1b}\u{7f}\u{85}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffe}",
        "caf\u{e9} \u{1f600} #x: y",
    ];
    for s in tricky {
        let text = format!("k: {}\n", quoted(s));
        let docs = crate::yaml::parse_documents("t", &text, 1 << 20).unwrap();
        let crate::yaml::Value::Map(entries) = &docs[0].value else {
            panic!("not a map: {text}")
        };
        let crate::yaml::Value::Str(back) = &entries[0].1.value else {
            panic!("not a string: {text}")
        };
        assert_eq!(back, s, "{text}");
    }
}
