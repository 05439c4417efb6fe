//! Unit tests of the certificate authority.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use base64::engine::general_purpose::STANDARD;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::test_support::{certs, csr, new_ca, options, p256, spiffe_id, verify_chain, workload};

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn server_names_parse_identity_and_dns_names() {
    let mut names: ServerNames = "ns/picket/sa/injector=injector.picket.svc,injector"
        .parse()
        .unwrap();
    names.merge("ns/picket/sa/injector=injector.picket.svc".parse().unwrap());
    assert_eq!(
        names.for_workload(&workload("picket", "injector")),
        Some(&["injector.picket.svc".to_owned(), "injector".to_owned()][..])
    );
    assert_eq!(names.for_workload(&workload("shop", "orders")), None);
    for bad in [
        "injector.picket.svc",
        "ns/picket/sa/injector=",
        "ns/picket/sa/injector=Injector.svc",
        "ns/picket/sa/injector=*.picket.svc",
        "ns/picket/sa/injector=-a.svc",
        "picket/injector=a.svc",
    ] {
        assert!(bad.parse::<ServerNames>().is_err(), "{bad}");
    }
}

fn token(authority: &Authority, uses: u32) -> String {
    authority
        .create_token(&workload("shop", "orders"), HOUR, uses)
        .unwrap()
}

fn issue_with_token(authority: &Authority, csr_pem: &str) -> Result<Issued, IssueError> {
    authority.issue(csr_pem, Credential::JoinToken(token(authority, 1)))
}

fn leaf(issued: &Issued) -> CertificateDer<'static> {
    certs(&issued.chain_pem).remove(0)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn issued_leaf_follows_the_svid_rules() {
    let (_dir, ca) = new_ca();
    let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    let der = leaf(&issued);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();

    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI("spiffe://example.org/ns/shop/sa/orders")]
    );
    assert!(san.critical, "SAN is critical since the subject is empty");
    assert_eq!(cert.subject().iter().count(), 0);

    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(!bc.value.ca);

    let ku = cert.key_usage().unwrap().expect("key usage").value;
    assert!(ku.digital_signature());
    assert!(
        !(ku.non_repudiation()
            || ku.key_encipherment()
            || ku.data_encipherment()
            || ku.key_agreement()
            || ku.key_cert_sign()
            || ku.crl_sign()
            || ku.encipher_only()
            || ku.decipher_only())
    );

    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(
        !(eku.any
            || eku.code_signing
            || eku.email_protection
            || eku.time_stamping
            || eku.ocsp_signing)
            && eku.other.is_empty()
    );
    assert!(cert.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));

    assert_eq!(certs(&issued.chain_pem).len(), 2, "leaf then issuer");
    verify_chain(&ca.trust_bundle_pem(), &issued.chain_pem).unwrap();
    let info = crate::svid::inspect_leaf(&der).unwrap();
    assert_eq!(info.id, issued.spiffe_id);
    assert_eq!(info.serial_hex, issued.serial);
    assert_eq!(issued.trust_bundle_pem, ca.trust_bundle_pem());
}

#[test]
fn serials_are_random_positive_at_least_64_bits_and_unique() {
    let (_dir, ca) = new_ca();
    let token = token(&ca, 20);
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let issued = ca
            .issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
            .unwrap();
        let der = leaf(&issued);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let raw = cert.raw_serial();
        assert!(raw[0] < 0x80, "serial is a positive integer");
        assert!(raw.len() <= 17);
        assert!(
            issued.serial.len() >= 16,
            "at least 64 bits: {}",
            issued.serial
        );
        assert!(seen.insert(issued.serial), "serial repeated");
    }
}

#[test]
fn leaf_is_backdated_60s_and_lives_24h_by_default() {
    let (_dir, ca) = new_ca();
    let before = OffsetDateTime::now_utc().unix_timestamp();
    let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    let info = crate::svid::inspect_leaf(&leaf(&issued)).unwrap();
    assert!((before - 62..=before - 58).contains(&info.not_before));
    // Not-before rounds down and not-after up to whole seconds.
    assert!((24 * 3600 + 60..=24 * 3600 + 61).contains(&(info.not_after - info.not_before)));
    assert_eq!(issued.not_after.unix_timestamp(), info.not_after);
}

#[test]
fn not_after_is_never_earlier_than_promised() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.leaf_ttl = MIN_LEAF_TTL;
    let ca = Authority::init(opts).unwrap();
    for _ in 0..20 {
        let asked = OffsetDateTime::now_utc();
        let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
        let info = crate::svid::inspect_leaf(&leaf(&issued)).unwrap();
        let promised = asked + MIN_LEAF_TTL;
        assert!(
            OffsetDateTime::from_unix_timestamp(info.not_after).unwrap() >= promised,
            "not_after {} is before {promised}",
            info.not_after
        );
        assert!(info.not_after - asked.unix_timestamp() <= 62);
    }
}

#[test]
fn lifetimes_round_up_to_whole_seconds() {
    assert_eq!(whole_seconds_up(Duration::from_millis(90_001)), 91);
    assert_eq!(whole_seconds_up(Duration::from_secs(90)), 90);
    let t = OffsetDateTime::from_unix_timestamp(100).unwrap();
    assert_eq!(ceil_to_second(t), t);
    assert_eq!(
        ceil_to_second(t + time::Duration::nanoseconds(1)).unix_timestamp(),
        101
    );
}

#[test]
fn configured_leaf_ttl_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.leaf_ttl = Duration::from_secs(90);
    let ca = Authority::init(opts).unwrap();
    let info =
        crate::svid::inspect_leaf(&leaf(&issue_with_token(&ca, &csr(&p256(), &[])).unwrap()))
            .unwrap();
    assert!((90 + 60..=90 + 61).contains(&(info.not_after - info.not_before)));
}

#[test]
fn leaf_ttl_above_the_maximum_is_refused_at_init() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.leaf_ttl = Duration::from_secs(8 * 24 * 3600);
    assert!(matches!(
        Authority::init(opts.clone()),
        Err(CaError::InvalidOption(_))
    ));
    opts.leaf_ttl = Duration::ZERO;
    assert!(matches!(
        Authority::init(opts),
        Err(CaError::InvalidOption(_))
    ));
}

#[test]
fn leaf_ttl_below_a_minute_is_refused_with_the_minimum_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    for short in [
        Duration::from_secs(1),
        Duration::from_secs(59),
        Duration::from_millis(59_999),
    ] {
        opts.leaf_ttl = short;
        let err = Authority::init(opts.clone()).unwrap_err();
        assert!(
            matches!(&err, CaError::InvalidOption(m) if m.contains("minimum of 60s")),
            "{err}"
        );
    }
    opts.leaf_ttl = MIN_LEAF_TTL;
    Authority::init(opts).unwrap();
}

#[test]
fn stored_leaf_ttl_below_the_minimum_is_named_at_open() {
    let (dir, ca) = new_ca();
    drop(ca);
    let path = dir.path().join("state").join(state::CONFIG);
    let text = fs::read_to_string(&path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["leaf_ttl_secs"] = 30.into();
    fs::write(&path, config.to_string()).unwrap();
    let err = Authority::open(dir.path().join("state")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ca.json") && text.contains("at least 60"),
        "{text}"
    );
}

#[test]
fn leaf_never_outlives_its_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.leaf_ttl = Duration::from_secs(400 * 24 * 3600);
    opts.max_leaf_ttl = opts.leaf_ttl;
    let ca = Authority::init(opts).unwrap();
    let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    let chain = certs(&issued.chain_pem);
    let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
    assert_eq!(
        issued.not_after.unix_timestamp(),
        issuer.validity().not_after.timestamp()
    );
}

#[test]
fn identity_comes_from_the_token_not_the_csr() {
    let (_dir, ca) = new_ca();
    // The CSR's subject claims something else; only the credential counts.
    let key = p256();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(
        DnType::CommonName,
        "spiffe://example.org/ns/kube-system/sa/admin",
    );
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = issue_with_token(&ca, &csr_pem).unwrap();
    assert_eq!(issued.spiffe_id, spiffe_id("shop", "orders"));
    let der = leaf(&issued);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject().iter().count(), 0);
}

#[test]
fn csr_naming_its_own_identity_is_accepted_and_dns_sans_are_dropped() {
    let (_dir, ca) = new_ca();
    let key = p256();
    let mut params = CertificateParams::new(vec!["orders.shop.svc".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/ns/shop/sa/orders".try_into().unwrap(),
    ));
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = issue_with_token(&ca, &csr_pem).unwrap();
    let der = leaf(&issued);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI("spiffe://example.org/ns/shop/sa/orders")]
    );
}

#[test]
fn csr_asking_for_another_identity_is_refused_without_using_the_token() {
    let (_dir, ca) = new_ca();
    let token = token(&ca, 1);
    let other = csr(&p256(), &["spiffe://example.org/ns/kube-system/sa/admin"]);
    let err = ca
        .issue(&other, Credential::JoinToken(token.clone()))
        .unwrap_err();
    assert!(matches!(err, IssueError::IdentityMismatch { .. }), "{err}");
    let two = csr(
        &p256(),
        &[
            "spiffe://example.org/ns/shop/sa/orders",
            "spiffe://example.org/ns/shop/sa/payments",
        ],
    );
    let err = ca
        .issue(&two, Credential::JoinToken(token.clone()))
        .unwrap_err();
    assert!(matches!(err, IssueError::IdentityMismatch { .. }), "{err}");
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token))
        .expect("the refused attempts did not use the token");
}

#[test]
fn csr_asking_for_a_ca_certificate_is_refused() {
    let (_dir, ca) = new_ca();
    let key = p256();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    assert!(matches!(
        issue_with_token(&ca, &csr_pem),
        Err(IssueError::CaRequested)
    ));
}

#[test]
fn malformed_or_mis_signed_csr_is_refused() {
    let (_dir, ca) = new_ca();
    for bad in [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(
            matches!(issue_with_token(&ca, bad), Err(IssueError::MalformedCsr(_))),
            "{bad:?}"
        );
    }
    let good = csr(&p256(), &[]);
    let mut der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        STANDARD.encode(&der)
    );
    assert!(matches!(
        issue_with_token(&ca, &tampered),
        Err(IssueError::MalformedCsr(_))
    ));
}

#[test]
fn only_p256_p384_and_ed25519_keys_are_accepted() {
    let (_dir, ca) = new_ca();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        issue_with_token(&ca, &csr(&key, &[])).unwrap();
    }
    let p521 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    assert!(matches!(
        issue_with_token(&ca, &csr(&p521, &[])),
        Err(IssueError::UnsupportedKey)
    ));
}

#[test]
fn single_use_token_is_refused_the_second_time() {
    let (_dir, ca) = new_ca();
    let token = token(&ca, 1);
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
        .unwrap();
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
        Err(IssueError::Token(TokenError::Used))
    ));
}

#[test]
fn token_with_two_uses_issues_twice() {
    let (_dir, ca) = new_ca();
    let token = token(&ca, 2);
    for _ in 0..2 {
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
            .unwrap();
    }
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
        Err(IssueError::Token(TokenError::Used))
    ));
}

#[test]
fn unknown_token_is_refused() {
    let (_dir, ca) = new_ca();
    token(&ca, 1);
    assert!(matches!(
        ca.issue(
            &csr(&p256(), &[]),
            Credential::JoinToken(token::generate().unwrap())
        ),
        Err(IssueError::Token(TokenError::Unknown))
    ));
}

#[test]
fn expired_token_is_refused() {
    let (_dir, ca) = new_ca();
    let expired = token::generate().unwrap();
    ca.store
        .lock()
        .unwrap()
        .add_token(
            &expired,
            &spiffe_id("shop", "orders"),
            now().saturating_sub(time::Duration::minutes(1)),
            1,
            now(),
        )
        .unwrap();
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(expired)),
        Err(IssueError::Token(TokenError::Expired))
    ));
}

#[test]
fn concurrent_redemptions_of_a_single_use_token_issue_once() {
    let (_dir, ca) = new_ca();
    let token = token(&ca, 1);
    let successes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count()
    });
    assert_eq!(successes, 1);
}

#[test]
fn token_options_must_be_positive() {
    let (_dir, ca) = new_ca();
    let w = workload("shop", "orders");
    assert!(matches!(
        ca.create_token(&w, Duration::ZERO, 1),
        Err(CaError::InvalidOption(_))
    ));
    assert!(matches!(
        ca.create_token(&w, HOUR, 0),
        Err(CaError::InvalidOption(_))
    ));
}

#[test]
fn renewal_keeps_the_identity_of_the_presented_certificate() {
    let (_dir, ca) = new_ca();
    let id = spiffe_id("shop", "payments");
    let issued = ca
        .issue(&csr(&p256(), &[]), Credential::Renewal(id.clone()))
        .unwrap();
    assert_eq!(issued.spiffe_id, id);
    let foreign: SpiffeId = "spiffe://other.org/ns/shop/sa/payments".parse().unwrap();
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::Renewal(foreign)),
        Err(IssueError::ForeignTrustDomain(_))
    ));
    let other = csr(&p256(), &["spiffe://example.org/ns/shop/sa/orders"]);
    assert!(matches!(
        ca.issue(&other, Credential::Renewal(id)),
        Err(IssueError::IdentityMismatch { .. })
    ));
}

#[test]
fn restart_keeps_root_and_issuer_and_never_reuses_a_serial() {
    let (dir, ca) = new_ca();
    let first = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    let bundle = ca.trust_bundle_pem().to_owned();
    drop(ca);

    let ca = Authority::open(dir.path().join("state")).unwrap();
    assert_eq!(ca.trust_bundle_pem(), bundle);
    let second = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    assert_eq!(certs(&first.chain_pem)[1], certs(&second.chain_pem)[1]);
    verify_chain(&bundle, &second.chain_pem).unwrap();
    drop(ca);

    let ca = Authority::open(dir.path().join("state")).unwrap();
    let serials = ca.issued_serials();
    assert_eq!(serials.len(), 2);
    assert!(serials.contains(&first.serial) && serials.contains(&second.serial));
}

#[test]
fn used_token_is_refused_after_restart() {
    let (dir, ca) = new_ca();
    let token = token(&ca, 1);
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token.clone()))
        .unwrap();
    drop(ca);
    let ca = Authority::open(dir.path().join("state")).unwrap();
    assert!(matches!(
        ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token)),
        Err(IssueError::Token(TokenError::Used))
    ));
}

#[test]
fn keys_are_owner_only_and_tokens_are_stored_hashed() {
    let (dir, ca) = new_ca();
    let token = token(&ca, 1);
    let state = dir.path().join("state");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join(state::ROOT_KEY)), 0o600);
    assert_eq!(mode(&state.join(state::ISSUER_KEY)), 0o600);
    for entry in fs::read_dir(&state).unwrap() {
        let content = fs::read(entry.unwrap().path()).unwrap();
        assert!(!content.windows(token.len()).any(|w| w == token.as_bytes()));
    }
}

#[test]
fn init_refuses_a_directory_that_holds_state() {
    let (dir, ca) = new_ca();
    let bundle = ca.trust_bundle_pem().to_owned();
    assert!(matches!(
        Authority::init(options(dir.path())),
        Err(CaError::AlreadyInitialised(_))
    ));
    assert_eq!(
        Authority::open(dir.path().join("state"))
            .unwrap()
            .trust_bundle_pem(),
        bundle
    );
}

#[test]
fn open_refuses_a_directory_without_state() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Authority::open(dir.path()),
        Err(CaError::State(StateError::Corrupt { .. }))
    ));
}

fn organisation_root(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = p256();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Example Org Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("org-root.pem");
    let key_path = dir.join("org-root.key");
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

#[test]
fn imported_organisation_root_signs_the_issuer_and_stays_outside_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, root_pem) = organisation_root(dir.path());
    let mut opts = options(dir.path());
    opts.root = Some((cert_path, key_path));
    let ca = Authority::init(opts).unwrap();

    assert_eq!(certs(&ca.trust_bundle_pem()), certs(&root_pem));
    let state = dir.path().join("state");
    assert!(!state.join(state::ROOT_KEY).exists());
    assert!(!state.join(state::ROOT_CERT).exists());

    let issued = issue_with_token(&ca, &csr(&p256(), &[])).unwrap();
    verify_chain(&root_pem, &issued.chain_pem).unwrap();
    let chain = certs(&issued.chain_pem);
    let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
    assert_eq!(issuer.issuer().to_string(), "CN=Example Org Root");
    let bc = issuer.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint == Some(0));
}

#[test]
fn imported_root_must_be_a_ca_with_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, _, _) = organisation_root(dir.path());
    let stranger = dir.path().join("stranger.key");
    fs::write(&stranger, p256().serialize_pem()).unwrap();
    let mut opts = options(dir.path());
    opts.root = Some((cert_path, stranger.clone()));
    assert!(matches!(
        Authority::init(opts.clone()),
        Err(CaError::ImportedRoot(_))
    ));

    let key = p256();
    let leaf = CertificateParams::new(vec!["example.org".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let leaf_path = dir.path().join("leaf.pem");
    fs::write(&leaf_path, leaf.pem()).unwrap();
    fs::write(&stranger, key.serialize_pem()).unwrap();
    opts.root = Some((leaf_path, stranger));
    assert!(matches!(
        Authority::init(opts),
        Err(CaError::ImportedRoot(_))
    ));
}

#[test]
fn server_certificate_names_the_given_hosts_for_server_auth_only() {
    let (_dir, ca) = new_ca();
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let (chain, _key) = ca.server_certificate(&names).unwrap();
    assert_eq!(chain.len(), 2);
    let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&[127, 0, 0, 1])
        ]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let validity = cert.validity();
    assert!(validity.not_after.timestamp() - validity.not_before.timestamp() <= 31 * 86_400);
    assert!(ca.server_certificate(&[]).is_err());
}

#[test]
fn a_reload_of_unreadable_material_keeps_the_material_in_force() {
    let (dir, ca) = new_ca();
    let before = ca.issuer_subject();
    let state = dir.path().join("state");
    let key_path = state.join(state::ISSUER_KEY);
    let good_key = fs::read(&key_path).unwrap();
    // A key that does not belong to issuer.pem: refused, nothing changes.
    fs::write(&key_path, p256().serialize_pem()).unwrap();
    let refused = ca.reload().unwrap_err().to_string();
    assert!(refused.contains("does not match issuer.pem"), "{refused}");
    assert_eq!(ca.issuer_subject(), before);
    ca.issue(&csr(&p256(), &[]), Credential::JoinToken(token(&ca, 1)))
        .unwrap();
    // Put back: the next reload sees the same material as before.
    fs::write(&key_path, good_key).unwrap();
    assert_eq!(ca.reload().unwrap(), Reloaded::Unchanged);
}

#[test]
fn a_replica_signs_with_shared_material_follows_it_and_redeems_no_join_token() {
    let (source_dir, source) = new_ca();
    let source_state = source_dir.path().join("state");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.signer_dir = Some(source_state.clone());
    let replica = Authority::init(opts).unwrap();
    let replica_state = dir.path().join("state");
    assert_eq!(replica.issuer_subject(), source.issuer_subject());
    assert!(!replica_state.join(state::ISSUER_KEY).exists());
    assert!(!replica_state.join(state::ROOT_KEY).exists());

    // Join tokens have one writer, the source: a replica neither makes nor redeems them.
    let made = replica.create_token(&workload("shop", "orders"), HOUR, 1);
    assert!(
        made.unwrap_err().to_string().contains("enrollment CA"),
        "a replica made a join token"
    );
    let redeemed = replica.issue(&csr(&p256(), &[]), Credential::JoinToken(token(&source, 1)));
    assert!(matches!(redeemed, Err(IssueError::JoinTokensNotServed)));

    // Renewals and reviewed service accounts: issued, chaining to the shared bundle, and
    // recorded in the replica's own store.
    let renewed = replica
        .issue(
            &csr(&p256(), &[]),
            Credential::Renewal(spiffe_id("shop", "orders")),
        )
        .unwrap();
    verify_chain(&source.trust_bundle_pem(), &renewed.chain_pem).unwrap();
    assert_eq!(
        replica.issued_serials(),
        std::slice::from_ref(&renewed.serial)
    );

    // The replica is not rotated itself; the source is, and the replica follows.
    let refused = crate::rotation::rotate_intermediate(&replica_state, &Default::default());
    assert!(
        refused.unwrap_err().to_string().contains("signer Secret"),
        "a replica was rotated"
    );
    crate::rotation::rotate_intermediate(&source_state, &Default::default()).unwrap();
    assert!(matches!(source.reload().unwrap(), Reloaded::Changed { .. }));
    assert!(matches!(
        replica.reload().unwrap(),
        Reloaded::Changed { .. }
    ));
    assert_eq!(replica.issuer_subject(), source.issuer_subject());

    // A bundle without the intermediate's root (a half-updated Secret) is refused.
    let bundle_path = source_state.join(state::BUNDLE);
    let good_bundle = fs::read(&bundle_path).unwrap();
    let (_other_dir, other) = new_ca();
    fs::write(&bundle_path, other.trust_bundle_pem()).unwrap();
    let refused = replica.reload().unwrap_err().to_string();
    assert!(
        refused.contains("the root issuer.pem chains to"),
        "{refused}"
    );
    fs::write(&bundle_path, good_bundle).unwrap();
    assert_eq!(replica.reload().unwrap(), Reloaded::Unchanged);

    // Opened again from its state directory, it still signs with the shared material.
    drop(replica);
    let reopened = Authority::open(&replica_state).unwrap();
    assert_eq!(reopened.issuer_subject(), source.issuer_subject());
}

/// A key whose hash starts with a zero byte still gets eight hex digits: the generation in a
/// CA's common name has one width (`spki 189` hashes to 00bf886f...).
#[test]
fn a_key_generation_keeps_its_leading_zeros() {
    assert_eq!(generation_of(b"spki 189"), "00bf886f");
    assert_eq!(generation_of(b"spki 0").len(), 8);
}
