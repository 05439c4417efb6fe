//! The parse_compile fuzz seeds are valid policy files, so fuzzing starts from deep inside the
//! accepted language.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use picket_policy::{LoadOptions, Source, load};

#[test]
fn fuzz_seeds_load() {
    let seeds = [
        (
            "orders.yaml",
            include_str!("../fuzz/seeds/parse_compile/orders.yaml"),
        ),
        (
            "audit.yaml",
            include_str!("../fuzz/seeds/parse_compile/audit.yaml"),
        ),
    ];
    for (name, text) in seeds {
        let set = load(&[Source { name, text }], &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!set.is_empty());
        let again = load(
            &[Source {
                name,
                text: &set.to_yaml(),
            }],
            &LoadOptions::default(),
        )
        .unwrap();
        assert!(again == set);
    }
}
