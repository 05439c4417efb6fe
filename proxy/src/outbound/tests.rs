use super::*;

#[test]
fn last_kx_is_empty_until_set_and_keeps_every_group() {
    let cell = LastKx::default();
    assert_eq!(cell.get(), None);
    for kx in KX_CODES {
        cell.set(kx);
        assert_eq!(cell.get(), Some(kx));
    }
}
