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

#[test]
fn controller_addresses_are_host_and_port() {
    for good in [
        "picket-controller.picket.svc:7150",
        "10.96.0.20:7150",
        "[fd00::20]:7150",
    ] {
        assert_eq!(parse_host_port(good).unwrap(), good);
    }
    for bad in [
        "picket-controller.picket.svc",
        "picket-controller:0",
        "picket-controller:http",
        ":7150",
        "a b:7150",
    ] {
        let e = parse_host_port(bad).unwrap_err();
        assert!(e.contains("host:port") && e.contains(bad), "{bad}: {e}");
    }
}
