use super::*;

#[test]
fn pattern_is_continuous_across_chunks() {
    let mut whole = vec![0u8; 3 * STREAM_CHUNK_BYTES];
    fill_pattern(0, &mut whole);
    let mut piece = vec![0u8; 1000];
    fill_pattern(STREAM_CHUNK_BYTES as u64 - 500, &mut piece);
    assert_eq!(
        piece[..],
        whole[STREAM_CHUNK_BYTES - 500..STREAM_CHUNK_BYTES + 500]
    );
}

#[tokio::test]
async fn pattern_body_matches_pattern_digest() {
    let len = 2 * STREAM_CHUNK_BYTES as u64 + 17;
    let mut body = pattern_body(len);
    let mut digest = BodyDigest::default();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            digest.update(data);
        }
    }
    assert_eq!(digest.finish(), BodyDigest::of_pattern(len));
}

#[test]
fn empty_digest_is_sha256_of_nothing() {
    let (n, hex) = BodyDigest::default().finish();
    assert_eq!(n, 0);
    assert_eq!(
        hex,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}
