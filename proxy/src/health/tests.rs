#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn health_request_encodes_the_service_name() {
    assert_eq!(&grpc_health_request("")[..], &[0, 0, 0, 0, 0]);
    assert_eq!(
        &grpc_health_request("orders")[..],
        &[0, 0, 0, 0, 8, 0x0a, 6, b'o', b'r', b'd', b'e', b'r', b's']
    );
}

#[test]
fn serving_status_is_read_from_field_one() {
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(SERVING));
    assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
    // An empty message is UNKNOWN (0), not SERVING.
    assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
    // Unknown fields are skipped.
    assert_eq!(
        serving_status(&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1]),
        Some(SERVING)
    );
    // Compressed, truncated or mislabelled lengths are refused.
    assert_eq!(serving_status(&[1, 0, 0, 0, 2, 0x08, 1]), None);
    assert_eq!(serving_status(&[0, 0, 0, 0, 3, 0x08, 1]), None);
    assert_eq!(serving_status(&[0, 0, 0]), None);
}
