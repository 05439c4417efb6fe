//! X.509-SVID rules for leaf certificates, checked after webpki has validated the chain.
//!
//! webpki proves the certificate chains to the trust bundle, is within its validity period and
//! carries the extended key usage for its role. This module adds what SPIFFE requires on top:
//! exactly one URI SAN holding a SPIFFE ID of the expected trust domain, a leaf that is not a
//! CA, a `digitalSignature` key usage and no certificate or CRL signing.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{SpiffeId, TrustDomain};

/// Why a certificate is not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The DER could not be parsed as an X.509 certificate.
    #[error("certificate is not valid DER X.509")]
    Malformed,
    /// No URI SAN at all.
    #[error("certificate has no URI SAN")]
    NoUriSan,
    /// More than one URI SAN: the identity would be ambiguous.
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    ManyUriSans(usize),
    /// The URI SAN is not a Picket SPIFFE ID.
    #[error("URI SAN {0:?} is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>")]
    NotSpiffe(String),
    /// The SPIFFE ID belongs to a different trust domain.
    #[error("SPIFFE ID {id} is outside trust domain {expected}")]
    ForeignTrustDomain {
        /// The identity in the certificate.
        id: String,
        /// The trust domain that was expected.
        expected: String,
    },
    /// The leaf is marked as a CA.
    #[error("leaf certificate has CA:true")]
    CaLeaf,
    /// Key usage is missing `digitalSignature` or allows certificate or CRL signing.
    #[error("leaf key usage must include digitalSignature and exclude keyCertSign and cRLSign")]
    KeyUsage,
    /// Outside the validity period.
    #[error("certificate is not valid at this time")]
    Expired,
}

/// Facts about a leaf SVID that callers show or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// The identity in the URI SAN.
    pub id: SpiffeId,
    /// Serial number, lowercase hex.
    pub serial_hex: String,
    /// Not-before, seconds since the Unix epoch.
    pub not_before: i64,
    /// Not-after, seconds since the Unix epoch.
    pub not_after: i64,
    /// The issuer's distinguished name, as text (e.g. `O=Picket, CN=Picket issuer CA 1a2b3c4d`).
    pub issuer: String,
}

/// Checks the SPIFFE rules for a leaf certificate of `trust_domain` at time `now_unix` and
/// returns its identity. Chain validation is the caller's (webpki's) job.
pub fn verify_leaf(
    der: &[u8],
    trust_domain: &TrustDomain,
    now_unix: i64,
) -> Result<SvidInfo, SvidError> {
    let info = inspect_leaf(der)?;
    if info.id.trust_domain() != trust_domain {
        return Err(SvidError::ForeignTrustDomain {
            id: info.id.to_string(),
            expected: trust_domain.to_string(),
        });
    }
    if now_unix < info.not_before || now_unix > info.not_after {
        return Err(SvidError::Expired);
    }
    Ok(info)
}

/// Checks the shape of a leaf SVID (SAN, CA flag, key usage) and returns what it says, without
/// looking at trust domain or time.
pub fn inspect_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    let id = single_spiffe_id(&cert)?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(SvidError::CaLeaf),
        Ok(_) => {}
        Err(_) => return Err(SvidError::Malformed),
    }
    match cert.key_usage() {
        Ok(Some(ku))
            if ku.value.digital_signature()
                && !ku.value.key_cert_sign()
                && !ku.value.crl_sign() => {}
        Ok(_) => return Err(SvidError::KeyUsage),
        Err(_) => return Err(SvidError::Malformed),
    }
    let validity = cert.validity();
    Ok(SvidInfo {
        id,
        serial_hex: hex_lower(cert.raw_serial()),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        issuer: cert.issuer().to_string(),
    })
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::Malformed)?
        .ok_or(SvidError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [uri] => uri
            .parse::<SpiffeId>()
            .map_err(|_| SvidError::NotSpiffe((*uri).to_owned())),
        many => Err(SvidError::ManyUriSans(many.len())),
    }
}

/// Lowercase hex of `bytes`, with leading zero bytes removed (as serials are shown).
pub fn hex_lower(bytes: &[u8]) -> String {
    let trimmed = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &bytes[bytes.len().saturating_sub(1)..],
    };
    picket_common::text::hex(trimmed)
}
