//! Rotating the CA's signing material, as `picket ca rotate` runs it.
//!
//! - **Intermediate**: a new issuer key and certificate under the current root. Certificates
//!   issued before keep verifying: they carry their own intermediate, which chains to the same
//!   root, so nothing changes for workloads.
//! - **Root**, in three stages, each one safe on its own:
//!   1. `add`: a new root is made and put in the trust bundle next to the current one. Nothing
//!      is signed with it yet. Every workload must get this bundle before the next stage.
//!   2. `switch`: a new intermediate is signed by the new root and issues from then on; the
//!      bundle still holds both roots, so certificates of either root verify everywhere.
//!   3. `remove`: the old root leaves the bundle. Refused while a certificate issued under the
//!      old root is still valid (the issuance log says which), unless forced.
//!
//! A CA whose root was imported (`picket ca init --root-cert-file --root-key-file`, as on
//! Kubernetes) does not keep the root's key: the operator passes the new root's certificate
//! to `add`, and its certificate and key to `switch` and `rotate intermediate`
//! (`--root-cert-file`, `--root-key-file`); the key is used once and not copied into the
//! state directory.
//!
//! Each root and intermediate has its own subject (its key's generation in the common name),
//! a subject key identifier and an authority key identifier, so chains are unambiguous while
//! two generations overlap. A running CA server (`picket ca serve`) reads the state directory
//! every second and puts a changed intermediate or trust bundle in force for issuance and for
//! its own TLS, with no restart ([`crate::authority::Authority::reload`]).
//!
//! Every file is replaced atomically, and the directory lock is held throughout. A command
//! interrupted by a crash leaves state that [`state::finish_interrupted_rotation`] completes
//! (at the next command or CA start): the issuer's key and certificate are always a matching
//! pair.

use std::path::Path;

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::{self, CaError};
use crate::state::{self, PUBLIC_MODE, SECRET_MODE, StateDir, StateError};
use crate::store::Store;

/// A stage of a root rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootStage {
    /// Make a new root and add it to the trust bundle.
    Add,
    /// Issue from a new intermediate under the new root.
    Switch,
    /// Take the old root out of the trust bundle.
    Remove,
}

impl std::str::FromStr for RootStage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "add" => Ok(Self::Add),
            "switch" => Ok(Self::Switch),
            "remove" => Ok(Self::Remove),
            other => Err(format!(
                "unknown root rotation stage {other:?}: use add, switch or remove"
            )),
        }
    }
}

/// What a rotation step did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// One line for the operator: what changed and what to do next.
    pub summary: String,
    /// The trust bundle from now on, PEM: what every workload must trust.
    pub bundle_pem: String,
}

/// An organisation root given on the command line: its certificate, and its key where the
/// step signs with it.
#[derive(Debug, Clone, Default)]
pub struct GivenRoot {
    /// The root certificate, PEM.
    pub cert: Option<std::path::PathBuf>,
    /// The root's private key, PEM.
    pub key: Option<std::path::PathBuf>,
}

/// A CA certificate and key.
struct CaCert {
    pem: String,
    subject: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

/// Signs a new intermediate under the current root (the CA's own, or `given`, which must be
/// in the trust bundle) and issues with it from the next CA start.
pub fn rotate_intermediate(state_dir: &Path, given: &GivenRoot) -> Result<Rotated, CaError> {
    let dir = StateDir::open(state_dir)?;
    refuse_shared_signer(&dir)?;
    let _lock = dir.lock()?;
    state::finish_interrupted_rotation(&dir)?;
    let now = authority::now();
    let root = match given_signing_root(&dir, given, now)? {
        Some(root) => root,
        None => load_ca(&dir, state::ROOT_CERT, state::ROOT_KEY, now)?,
    };
    let subject = install_issuer(&dir, &root, now)?;
    Ok(Rotated {
        summary: format!(
            "new intermediate {subject:?} under {:?}; a running CA issues with it within a \
             second (the trust bundle is unchanged)",
            root.subject
        ),
        bundle_pem: dir.read_string(state::BUNDLE)?,
    })
}

/// Runs one stage of a root rotation; `force` lets `remove` go ahead while certificates of the
/// old root are still valid (they stop verifying at once).
/// `given` is the new organisation root for a CA whose root was imported: its certificate
/// for `add`, its certificate and key for `switch`.
pub fn rotate_root(
    state_dir: &Path,
    stage: RootStage,
    given: &GivenRoot,
    force: bool,
) -> Result<Rotated, CaError> {
    let dir = StateDir::open(state_dir)?;
    refuse_shared_signer(&dir)?;
    let _lock = dir.lock()?;
    state::finish_interrupted_rotation(&dir)?;
    let now = authority::now();
    match stage {
        RootStage::Add if given.cert.is_some() => add_given_root(&dir, given, now),
        RootStage::Add => add_root(&dir, now),
        RootStage::Switch => match given_signing_root(&dir, given, now)? {
            Some(root) => {
                let subject = install_issuer(&dir, &root, now)?;
                dir.remove(state::NEXT_ROOT_CERT)?;
                Ok(switched(&dir, &subject, &root)?)
            }
            None => switch_root(&dir, now),
        },
        RootStage::Remove => remove_root(&dir, now, force),
    }
}

/// A replica signing with shared material is not rotated itself: the CA the material comes
/// from is, and the material is handed to every replica again.
fn refuse_shared_signer(dir: &StateDir) -> Result<(), CaError> {
    match authority::shared_signer_dir(dir)? {
        None => Ok(()),
        Some(shared) => Err(CaError::InvalidOption(format!(
            "{} is a CA replica signing with the shared material in {}: rotate the CA that \
             material comes from (the enrollment CA's state directory), then update the shared \
             material (on Kubernetes, the signer Secret); every replica takes it up without a \
             restart",
            dir.path().display(),
            shared.display()
        ))),
    }
}

/// The root given with both certificate and key, checked, and required to be in the trust
/// bundle already; `None` if no root was given.
fn given_signing_root(
    dir: &StateDir,
    given: &GivenRoot,
    now: OffsetDateTime,
) -> Result<Option<CaCert>, CaError> {
    let (cert, key) = match (&given.cert, &given.key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(CaError::InvalidOption(
                "signing with an organisation root needs both --root-cert-file and --root-key-file"
                    .into(),
            ));
        }
    };
    let (issuer, not_after, pem) = authority::import_root(cert, key, now)?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CaError::ImportedRoot(format!("{}: {e}", cert.display())))?;
    let bundle = dir.read_string(state::BUNDLE)?;
    let in_bundle =
        CertificateDer::pem_slice_iter(bundle.as_bytes()).any(|c| c.is_ok_and(|c| c == der));
    if !in_bundle {
        return Err(CaError::InvalidOption(format!(
            "{} is not in the trust bundle: run `picket ca rotate root --stage add \
             --root-cert-file {}` first, and give every workload the new bundle",
            cert.display(),
            cert.display()
        )));
    }
    let (_, parsed) = X509Certificate::from_der(&der)
        .map_err(|e| CaError::ImportedRoot(format!("{}: {e}", cert.display())))?;
    Ok(Some(CaCert {
        subject: parsed.subject().to_string(),
        pem,
        not_after,
        issuer,
    }))
}

/// `add` for an organisation root: its certificate joins the bundle; its key stays with the
/// organisation until `switch`.
fn add_given_root(
    dir: &StateDir,
    given: &GivenRoot,
    now: OffsetDateTime,
) -> Result<Rotated, CaError> {
    let Some(path) = &given.cert else {
        return Err(CaError::InvalidOption(
            "--root-cert-file is required".into(),
        ));
    };
    if given.key.is_some() {
        return Err(CaError::InvalidOption(
            "--stage add takes only the new root's certificate; its key is needed at --stage \
             switch"
                .into(),
        ));
    }
    let bad = |reason: String| CaError::ImportedRoot(format!("{}: {reason}", path.display()));
    let pem = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?;
    if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
        return Err(bad("not a CA certificate".into()));
    }
    let valid_now = authority::unix_time(cert.validity().not_before.timestamp())
        .is_some_and(|t| t <= now)
        && authority::unix_time(cert.validity().not_after.timestamp()).is_some_and(|t| t > now);
    if !valid_now {
        return Err(bad("not valid at this time".into()));
    }
    let subject = cert.subject().to_string();
    let bundle = dir.read_string(state::BUNDLE)?;
    let present =
        CertificateDer::pem_slice_iter(bundle.as_bytes()).any(|c| c.is_ok_and(|c| c == der));
    let bundle = if present {
        bundle
    } else {
        format!("{bundle}{}", authority::pem_certificate(&der))
    };
    dir.write(state::NEXT_ROOT_CERT, pem.as_bytes(), PUBLIC_MODE)?;
    dir.write(state::BUNDLE, bundle.as_bytes(), PUBLIC_MODE)?;
    Ok(Rotated {
        summary: format!(
            "added root {subject:?} to the trust bundle (a running CA serves it within a \
             second); give every workload the new trust bundle, then run --stage switch with \
             the root's certificate and key"
        ),
        bundle_pem: bundle,
    })
}

fn switched(dir: &StateDir, subject: &str, root: &CaCert) -> Result<Rotated, CaError> {
    Ok(Rotated {
        summary: format!(
            "issuing with {subject:?} under the new root {:?} (a running CA within a second); \
             run --stage remove once every certificate of the old root has expired",
            root.subject
        ),
        bundle_pem: dir.read_string(state::BUNDLE)?,
    })
}

fn add_root(dir: &StateDir, now: OffsetDateTime) -> Result<Rotated, CaError> {
    if dir.exists(state::PREV_ROOT_CERT)? {
        return Err(CaError::InvalidOption(format!(
            "the previous root ({}) is still in the trust bundle: finish the last rotation \
             with `picket ca rotate root --stage remove` first",
            dir.file(state::PREV_ROOT_CERT).display()
        )));
    }
    let current = load_ca(dir, state::ROOT_CERT, state::ROOT_KEY, now)?;
    let next = if dir.exists(state::NEXT_ROOT_CERT)? {
        // Added before: the same root again, so a repeated command changes nothing.
        load_ca(dir, state::NEXT_ROOT_CERT, state::NEXT_ROOT_KEY, now)?
    } else {
        let (key, pem, _, _) = authority::new_root(now)?;
        dir.write(
            state::NEXT_ROOT_KEY,
            key.serialize_pem().as_bytes(),
            SECRET_MODE,
        )?;
        dir.write(state::NEXT_ROOT_CERT, pem.as_bytes(), PUBLIC_MODE)?;
        load_ca(dir, state::NEXT_ROOT_CERT, state::NEXT_ROOT_KEY, now)?
    };
    let bundle = format!("{}{}", current.pem, next.pem);
    dir.write(state::BUNDLE, bundle.as_bytes(), PUBLIC_MODE)?;
    Ok(Rotated {
        summary: format!(
            "added root {:?} next to {:?} (a running CA serves it within a second); give \
             every workload the new trust bundle, then run --stage switch",
            next.subject, current.subject
        ),
        bundle_pem: bundle,
    })
}

fn switch_root(dir: &StateDir, now: OffsetDateTime) -> Result<Rotated, CaError> {
    if dir.exists(state::NEXT_ROOT_CERT)? {
        let next = load_ca(dir, state::NEXT_ROOT_CERT, state::NEXT_ROOT_KEY, now)?;
        let bundle = dir.read_string(state::BUNDLE)?;
        if !bundle.contains(next.pem.trim()) {
            return Err(CaError::InvalidOption(format!(
                "the trust bundle does not hold the new root {:?}: run --stage add again",
                next.subject
            )));
        }
        dir.rename(state::ROOT_KEY, state::PREV_ROOT_KEY)?;
        dir.rename(state::ROOT_CERT, state::PREV_ROOT_CERT)?;
        dir.rename(state::NEXT_ROOT_KEY, state::ROOT_KEY)?;
        dir.rename(state::NEXT_ROOT_CERT, state::ROOT_CERT)?;
    } else if !dir.exists(state::PREV_ROOT_CERT)? || issuer_root(dir)? == root_subject(dir)? {
        return Err(CaError::InvalidOption(
            "no new root is staged: run `picket ca rotate root --stage add` first".into(),
        ));
    }
    // Here the new root is root.pem; the issuer may still be the old root's if an earlier
    // switch was interrupted, and is replaced in either case.
    let root = load_ca(dir, state::ROOT_CERT, state::ROOT_KEY, now)?;
    let subject = install_issuer(dir, &root, now)?;
    switched(dir, &subject, &root)
}

fn remove_root(dir: &StateDir, now: OffsetDateTime, force: bool) -> Result<Rotated, CaError> {
    // The root in use is the one the intermediate chains to; every other bundle entry goes.
    let root = issuer_root(dir)?;
    let bundle = dir.read_string(state::BUNDLE)?;
    let mut keep = Vec::new();
    let mut dropped = 0usize;
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        let der = cert.map_err(|e| authority::corrupt(dir, state::BUNDLE, e.to_string()))?;
        let (_, parsed) = X509Certificate::from_der(&der)
            .map_err(|e| authority::corrupt(dir, state::BUNDLE, e.to_string()))?;
        if parsed.subject().to_string() == root {
            keep.push(authority::pem_certificate(&der));
        } else {
            dropped += 1;
        }
    }
    if dropped == 0 {
        return Err(CaError::InvalidOption(
            "the trust bundle holds no other root to remove: run --stage add and --stage \
             switch first"
                .into(),
        ));
    }
    if keep.is_empty() {
        return Err(CaError::InvalidOption(format!(
            "the trust bundle does not hold the intermediate's root {root:?}; refusing to \
             leave workloads without it"
        )));
    }
    if dir.exists(state::NEXT_ROOT_CERT)? {
        return Err(CaError::InvalidOption(
            "a new root is staged but not switched to: run --stage switch first".into(),
        ));
    }
    let (old, last) = Store::open(dir)?.valid_under_other_roots(&root, now)?;
    if let Some(last) = last
        && old > 0
        && !force
    {
        return Err(CaError::InvalidOption(format!(
            "{old} certificate(s) issued under the previous root are still valid, the last \
             until {last}; they would stop verifying. Wait until then (or pass --force)"
        )));
    }
    let bundle = keep.concat();
    dir.write(state::BUNDLE, bundle.as_bytes(), PUBLIC_MODE)?;
    dir.remove(state::PREV_ROOT_KEY)?;
    dir.remove(state::PREV_ROOT_CERT)?;
    Ok(Rotated {
        summary: format!(
            "removed {dropped} root(s); the trust bundle holds only {root:?} (a running CA \
             serves it within a second); give every workload the new trust bundle"
        ),
        bundle_pem: bundle,
    })
}

/// Makes a new intermediate under `root` and installs it: key and certificate are written
/// under temporary names, then the key and the certificate are renamed into place, in that
/// order ([`state::finish_interrupted_rotation`] completes a rename a crash cut short).
/// Returns its subject.
fn install_issuer(dir: &StateDir, root: &CaCert, now: OffsetDateTime) -> Result<String, CaError> {
    if root.not_after <= now {
        return Err(CaError::InvalidOption(format!(
            "the root {:?} expired at {}",
            root.subject, root.not_after
        )));
    }
    let (key, pem) = authority::new_issuer(&root.issuer, root.not_after, now)?;
    dir.write(
        state::NEXT_ISSUER_KEY,
        key.serialize_pem().as_bytes(),
        SECRET_MODE,
    )?;
    dir.write(state::NEXT_ISSUER_CERT, pem.as_bytes(), PUBLIC_MODE)?;
    dir.rename(state::NEXT_ISSUER_KEY, state::ISSUER_KEY)?;
    dir.rename(state::NEXT_ISSUER_CERT, state::ISSUER_CERT)?;
    let subject = parse(dir, state::ISSUER_CERT, &pem)?.0;
    tracing::info!(issuer = %subject, root = %root.subject, "installed a new intermediate");
    Ok(subject)
}

/// Reads a CA certificate and its key; a root without its key (an imported organisation
/// root) cannot be rotated by Picket.
fn load_ca(
    dir: &StateDir,
    cert_name: &str,
    key_name: &str,
    now: OffsetDateTime,
) -> Result<CaCert, CaError> {
    if !dir.exists(key_name)? {
        return Err(CaError::InvalidOption(format!(
            "{} is missing: the root was imported from an organisation CA, whose key Picket \
             does not keep; rotate it with that CA (a new `picket ca init --root-cert-file \
             --root-key-file` in a new state directory)",
            dir.file(key_name).display()
        )));
    }
    let pem = dir.read_string(cert_name)?;
    let (subject, der) = parse(dir, cert_name, &pem)?;
    let key = KeyPair::from_pem(&dir.read_string(key_name)?)
        .map_err(|e| authority::corrupt(dir, key_name, e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| authority::corrupt(dir, cert_name, e.to_string()))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(
            authority::corrupt(dir, key_name, format!("does not match {cert_name}")).into(),
        );
    }
    let not_after = authority::unix_time(cert.validity().not_after.timestamp())
        .ok_or_else(|| authority::corrupt(dir, cert_name, "bad not-after".into()))?;
    if not_after <= now {
        return Err(CaError::InvalidOption(format!(
            "{subject:?} ({}) expired at {not_after}",
            dir.file(cert_name).display()
        )));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| authority::corrupt(dir, cert_name, e.to_string()))?;
    Ok(CaCert {
        pem,
        subject,
        not_after,
        issuer,
    })
}

/// The subject and DER of the one certificate in `pem` (the file `name`).
fn parse(
    dir: &StateDir,
    name: &str,
    pem: &str,
) -> Result<(String, CertificateDer<'static>), StateError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| authority::corrupt(dir, name, e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| authority::corrupt(dir, name, e.to_string()))?;
    Ok((cert.subject().to_string(), der))
}

/// The subject of `root.pem` (a generated root).
fn root_subject(dir: &StateDir) -> Result<String, StateError> {
    Ok(parse(dir, state::ROOT_CERT, &dir.read_string(state::ROOT_CERT)?)?.0)
}

/// The issuer name in `issuer.pem`: the subject of the root that signed it.
fn issuer_root(dir: &StateDir) -> Result<String, StateError> {
    let pem = dir.read_string(state::ISSUER_CERT)?;
    let der = parse(dir, state::ISSUER_CERT, &pem)?.1;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| authority::corrupt(dir, state::ISSUER_CERT, e.to_string()))?;
    Ok(cert.issuer().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
