#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn images_must_name_a_version() {
    for good in [
        "picket/picket:0.1.0",
        "registry.local:5000/picket:1.2",
        "picket@sha256:0123456789abcdef",
    ] {
        assert_eq!(parse_image(good).unwrap(), good);
    }
    for bad in [
        "picket/picket",
        "picket/picket:latest",
        "registry.local:5000/picket",
        "picket:",
    ] {
        assert!(parse_image(bad).is_err(), "{bad}");
    }
}
