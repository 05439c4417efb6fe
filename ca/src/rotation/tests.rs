//! Unit tests of intermediate and root rotation.

use std::fs;

use x509_parser::extensions::ParsedExtension;

use super::*;
use crate::authority::{Authority, Credential, Issued};
use crate::test_support::{certs, csr, new_ca, options, p256, verify_chain, workload};

fn issue(state: &Path) -> Issued {
    let ca = Authority::open(state).unwrap();
    let token = ca
        .create_token(
            &workload("shop", "orders"),
            std::time::Duration::from_secs(3600),
            1,
        )
        .unwrap();
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token))
        .unwrap()
}

fn subject_and_keys(der: &[u8]) -> (String, String, Option<Vec<u8>>, Option<Vec<u8>>) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    (
        cert.subject().to_string(),
        cert.issuer().to_string(),
        ski,
        aki,
    )
}

fn bundle(state: &Path) -> String {
    fs::read_to_string(state.join(state::BUNDLE)).unwrap()
}

#[test]
fn every_generation_has_its_own_subject_and_key_identifiers() {
    let (dir, _ca) = new_ca();
    let state = dir.path().join("state");
    let root_pem = fs::read_to_string(state.join(state::ROOT_CERT)).unwrap();
    let (root_subject, _, root_ski, _) = subject_and_keys(&certs(&root_pem)[0]);
    assert!(
        root_subject.starts_with("O=Picket, CN=Picket root CA "),
        "{root_subject}"
    );
    let root_ski = root_ski.expect("root has a subject key identifier");

    let first = issue(&state);
    let chain = certs(&first.chain_pem);
    let (issuer_subject, issuer_issuer, issuer_ski, issuer_aki) = subject_and_keys(&chain[1]);
    assert!(
        issuer_subject.contains("CN=Picket issuer CA "),
        "{issuer_subject}"
    );
    assert_eq!(issuer_issuer, root_subject);
    assert_eq!(issuer_aki.as_ref(), Some(&root_ski));
    let (_, leaf_issuer, _, leaf_aki) = subject_and_keys(&chain[0]);
    assert_eq!(leaf_issuer, issuer_subject);
    assert_eq!(leaf_aki, issuer_ski);

    rotate_intermediate(&state, &GivenRoot::default()).unwrap();
    let second = issue(&state);
    let (second_subject, second_issuer, _, second_aki) =
        subject_and_keys(&certs(&second.chain_pem)[1]);
    assert_ne!(second_subject, issuer_subject);
    assert_eq!(second_issuer, root_subject);
    assert_eq!(second_aki.as_ref(), Some(&root_ski));
    // The bundle did not change, and both generations' leaves verify against it.
    assert_eq!(bundle(&state), root_pem);
    verify_chain(&bundle(&state), &first.chain_pem).unwrap();
    verify_chain(&bundle(&state), &second.chain_pem).unwrap();
}

#[test]
fn root_rotation_keeps_every_valid_leaf_verifying_until_remove() {
    let (dir, _ca) = new_ca();
    let state = dir.path().join("state");
    let old = issue(&state);

    // Switch and remove before add are refused.
    let err = rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap_err();
    assert!(err.to_string().contains("--stage add"), "{err}");
    let err = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), false).unwrap_err();
    assert!(err.to_string().contains("no other root"), "{err}");

    let added = rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
    assert_eq!(certs(&added.bundle_pem).len(), 2);
    // Repeating add changes nothing.
    let again = rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
    assert_eq!(again.bundle_pem, added.bundle_pem);
    // Still issuing under the old root.
    let during_add = issue(&state);
    assert_eq!(certs(&during_add.chain_pem)[1], certs(&old.chain_pem)[1]);

    rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap();
    let new = issue(&state);
    let both = bundle(&state);
    assert_eq!(
        both, added.bundle_pem,
        "the bundle keeps both roots after the switch"
    );
    for leaf in [&old, &during_add, &new] {
        verify_chain(&both, &leaf.chain_pem).unwrap();
    }
    let new_root = fs::read_to_string(state.join(state::ROOT_CERT)).unwrap();
    assert!(verify_chain(&new_root, &old.chain_pem).is_err());
    verify_chain(&new_root, &new.chain_pem).unwrap();

    // The old root's leaves are valid for a day: remove is refused, and says why.
    let err = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), false).unwrap_err();
    assert!(err.to_string().contains("2 certificate(s)"), "{err}");
    assert_eq!(bundle(&state), both);
    let removed = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), true).unwrap();
    assert_eq!(removed.bundle_pem, new_root);
    assert_eq!(bundle(&state), new_root);
    assert!(!state.join(state::PREV_ROOT_KEY).exists());
    verify_chain(&bundle(&state), &issue(&state).chain_pem).unwrap();
    // A second rotation can start.
    rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
}

#[test]
fn remove_waits_only_for_valid_leaves_of_the_old_root() {
    let (dir, _ca) = new_ca();
    let state = dir.path().join("state");
    rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
    rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap();
    issue(&state);
    // Only a leaf of the new root was issued: nothing to wait for.
    rotate_root(&state, RootStage::Remove, &GivenRoot::default(), false).unwrap();
}

fn org_root(dir: &Path, name: &str) -> GivenRoot {
    let key = p256();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    GivenRoot {
        cert: Some(cert_path),
        key: Some(key_path),
    }
}

#[test]
fn an_imported_root_is_rotated_with_the_organisation_root_given() {
    let dir = tempfile::tempdir().unwrap();
    let first = org_root(dir.path(), "Org Root 1");
    let mut opts = options(dir.path());
    opts.root = Some((first.cert.clone().unwrap(), first.key.clone().unwrap()));
    Authority::init(opts).unwrap();
    let state = dir.path().join("state");
    // Without the root's key, nothing can be signed.
    for err in [
        rotate_intermediate(&state, &GivenRoot::default()).unwrap_err(),
        rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap_err(),
    ] {
        assert!(err.to_string().contains("imported"), "{err}");
    }
    let old = issue(&state);
    rotate_intermediate(&state, &first).unwrap();
    verify_chain(&bundle(&state), &issue(&state).chain_pem).unwrap();

    let second = org_root(dir.path(), "Org Root 2");
    // Switching to a root the workloads do not trust yet is refused.
    let err = rotate_root(&state, RootStage::Switch, &second, false).unwrap_err();
    assert!(err.to_string().contains("not in the trust bundle"), "{err}");
    let cert_only = GivenRoot {
        cert: second.cert.clone(),
        key: None,
    };
    let added = rotate_root(&state, RootStage::Add, &cert_only, false).unwrap();
    assert_eq!(certs(&added.bundle_pem).len(), 2);
    rotate_root(&state, RootStage::Switch, &second, false).unwrap();
    let new = issue(&state);
    let (_, issuer_root, _, _) = subject_and_keys(&certs(&new.chain_pem)[1]);
    assert_eq!(issuer_root, "CN=Org Root 2");
    verify_chain(&bundle(&state), &old.chain_pem).unwrap();
    verify_chain(&bundle(&state), &new.chain_pem).unwrap();
    let err = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), false).unwrap_err();
    assert!(err.to_string().contains("still valid"), "{err}");
    let removed = rotate_root(&state, RootStage::Remove, &GivenRoot::default(), true).unwrap();
    assert_eq!(certs(&removed.bundle_pem).len(), 1);
    assert!(verify_chain(&removed.bundle_pem, &old.chain_pem).is_err());
    verify_chain(&removed.bundle_pem, &new.chain_pem).unwrap();
    // The organisation's key was never copied into the state directory.
    assert!(!state.join(state::ROOT_KEY).exists());
}

#[test]
fn an_interrupted_issuer_install_is_completed_or_dropped() {
    let (dir, _ca) = new_ca();
    let state = dir.path().join("state");
    let state_dir = StateDir::open(&state).unwrap();
    let root = load_ca(
        &state_dir,
        state::ROOT_CERT,
        state::ROOT_KEY,
        authority::now(),
    )
    .unwrap();
    let before = fs::read_to_string(state.join(state::ISSUER_CERT)).unwrap();

    // Crash after both temporary files were written: the old pair stays.
    let (key, pem) = authority::new_issuer(&root.issuer, root.not_after, authority::now()).unwrap();
    fs::write(state.join(state::NEXT_ISSUER_KEY), key.serialize_pem()).unwrap();
    fs::write(state.join(state::NEXT_ISSUER_CERT), &pem).unwrap();
    Authority::open(&state).unwrap();
    assert_eq!(
        fs::read_to_string(state.join(state::ISSUER_CERT)).unwrap(),
        before
    );
    assert!(!state.join(state::NEXT_ISSUER_CERT).exists());

    // Crash after the key was moved into place: the certificate follows it.
    fs::write(state.join(state::ISSUER_KEY), key.serialize_pem()).unwrap();
    fs::write(state.join(state::NEXT_ISSUER_CERT), &pem).unwrap();
    Authority::open(&state).unwrap();
    assert_eq!(
        fs::read_to_string(state.join(state::ISSUER_CERT)).unwrap(),
        pem
    );
    issue(&state);
}

#[test]
fn an_interrupted_root_switch_is_finished() {
    let (dir, _ca) = new_ca();
    let state = dir.path().join("state");
    rotate_root(&state, RootStage::Add, &GivenRoot::default(), false).unwrap();
    let next = fs::read_to_string(state.join(state::NEXT_ROOT_CERT)).unwrap();
    // Crash after the old root was moved away and before the new one was moved in.
    fs::rename(
        state.join(state::ROOT_KEY),
        state.join(state::PREV_ROOT_KEY),
    )
    .unwrap();
    fs::rename(
        state.join(state::ROOT_CERT),
        state.join(state::PREV_ROOT_CERT),
    )
    .unwrap();
    rotate_root(&state, RootStage::Switch, &GivenRoot::default(), false).unwrap();
    assert_eq!(
        fs::read_to_string(state.join(state::ROOT_CERT)).unwrap(),
        next
    );
    verify_chain(&next, &issue(&state).chain_pem).unwrap();
}

#[test]
fn stages_parse_and_unknown_ones_are_named() {
    assert_eq!("add".parse::<RootStage>().unwrap(), RootStage::Add);
    assert_eq!("switch".parse::<RootStage>().unwrap(), RootStage::Switch);
    assert_eq!("remove".parse::<RootStage>().unwrap(), RootStage::Remove);
    let err = "drop".parse::<RootStage>().unwrap_err();
    assert!(err.contains("\"drop\""), "{err}");
}
