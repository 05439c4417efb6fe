//! The spelling rules of a Picket SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/sa/<name>`,
//! in one place: the CA's identity types parse with them, and the policy engine checks
//! `principals` against them (a principal that no identity can have is a load error).

/// The longest trust domain.
pub const MAX_TRUST_DOMAIN: usize = 255;
/// The longest namespace or service-account name (a Kubernetes DNS subdomain).
pub const MAX_NAME: usize = 253;

/// A byte a trust domain may hold: lowercase letters, digits, `.`, `-` and `_`.
pub fn trust_domain_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

/// A byte a namespace or service-account name may hold: lowercase letters, digits, `-`, `.`.
pub fn name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
}

/// A byte a name may begin or end with: a lowercase letter or a digit.
pub fn name_edge_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `s` is a trust domain: not empty, at most 255 bytes of [`trust_domain_byte`], not
/// beginning or ending with `.`.
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TRUST_DOMAIN
        && s.bytes().all(trust_domain_byte)
        && !s.starts_with('.')
        && !s.ends_with('.')
}

/// Whether `s` is a namespace or service-account name: not empty, at most 253 bytes of
/// [`name_byte`], a letter or digit at each end, no `..`.
pub fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.first().copied().is_some_and(name_edge_byte)
        && b.last().copied().is_some_and(name_edge_byte)
        && b.iter().copied().all(name_byte)
        && !s.contains("..")
}

#[cfg(test)]
mod tests;
