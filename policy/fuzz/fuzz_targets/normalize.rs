//! Arbitrary request parts through normalization: nothing may panic, and a normalized path
//! normalizes to itself under every option set.

#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_policy::normalize::{
    Backslash, EncodedSlashes, PathOptions, PathParams, normalize_host, normalize_method,
    normalize_path,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = PathOptions {
        encoded_slashes: [
            EncodedSlashes::Reject,
            EncodedSlashes::Decode,
            EncodedSlashes::Keep,
        ][usize::from(selector % 3)],
        backslash: [Backslash::Reject, Backslash::Slash][usize::from((selector / 3) % 2)],
        path_params: [PathParams::Keep, PathParams::Strip, PathParams::Reject]
            [usize::from((selector / 6) % 3)],
    };
    if let Ok(once) = normalize_path(text, &opts) {
        assert!(once.starts_with('/'));
        assert!(!once.contains("//"), "{once}");
        assert_eq!(
            normalize_path(&once, &opts).as_deref(),
            Ok(once.as_str()),
            "{text:?}"
        );
        for segment in once.split('/') {
            assert!(segment != "." && segment != "..", "{once}");
        }
    }
    if let Ok(host) = normalize_host(text) {
        assert_eq!(
            normalize_host(&host).as_deref(),
            Ok(host.as_str()),
            "{text:?}"
        );
    }
    let _ = normalize_method(text);
});
