#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use super::Cidr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn blocks_contain_their_addresses_only() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(c.contains(ip("10.2.3.4")));
    assert!(!c.contains(ip("11.0.0.0")));
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    assert!(Cidr::parse("10.1.2.3").unwrap().contains(ip("10.1.2.3")));
    assert!(!Cidr::parse("10.1.2.3").unwrap().contains(ip("10.1.2.4")));
    let v6 = Cidr::parse("2001:db8::/32").unwrap();
    assert!(v6.contains(ip("2001:db8::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
}

#[test]
fn v4_mapped_block_is_the_v4_block() {
    let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
    assert_eq!(mapped, Cidr::parse("10.0.0.0/8").unwrap());
    assert!(mapped.contains(ip("10.9.9.9")));
    assert_eq!(mapped.to_string(), "10.0.0.0/8");
}

#[test]
fn malformed_blocks_are_rejected_with_the_input_named() {
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0/8",
        "x",
        "::1/129",
        "010.0.0.1",
        "10.0.0.0/+8",
        "10.0.0.0/08000",
    ] {
        let err = Cidr::parse(bad).unwrap_err().to_string();
        assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
    }
    assert!(
        Cidr::parse("10.0.0.1/8")
            .unwrap_err()
            .to_string()
            .contains("did you mean `10.0.0.0/8`")
    );
}

#[test]
fn display_round_trips() {
    for s in [
        "10.0.0.0/8",
        "10.1.2.3/32",
        "2001:db8::/32",
        "::1/128",
        "0.0.0.0/0",
    ] {
        assert_eq!(Cidr::parse(s).unwrap().to_string(), s);
        assert_eq!(s.parse::<Cidr>().unwrap(), Cidr::parse(s).unwrap());
    }
}
