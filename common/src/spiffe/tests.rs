use super::*;

#[test]
fn trust_domains() {
    for ok in ["cluster.local", "example.org", "a", "prod_1-eu.example"] {
        assert!(is_trust_domain(ok), "{ok}");
    }
    for bad in [
        "",
        ".local",
        "cluster.",
        "Cluster.local",
        "a/b",
        "a b",
        &"a".repeat(256),
    ] {
        assert!(!is_trust_domain(bad), "{bad}");
    }
}

#[test]
fn names() {
    for ok in ["shop", "a", "front-end", "v1.2", "0a"] {
        assert!(is_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        ".a",
        "a..b",
        "Shop",
        "a_b",
        "a/b",
        &"a".repeat(254),
    ] {
        assert!(!is_name(bad), "{bad}");
    }
}
