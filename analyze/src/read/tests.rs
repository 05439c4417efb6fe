use super::leading_type;

#[test]
fn reads_the_leading_type_with_any_spacing() {
    assert_eq!(
        leading_type(br#"{"type":"alert","kind":1}"#),
        Some(&b"alert"[..])
    );
    assert_eq!(leading_type(br#" { "type" : "edge" }"#), Some(&b"edge"[..]));
    assert_eq!(leading_type(br#"{"ts":"x","type":"alert"}"#), None);
    assert_eq!(leading_type(b"garbage"), None);
}
