//! The one CIDR type: policy `ipBlocks`, the sidecar's `meshed:` destinations and the
//! Kubernetes opt-out annotations all parse with [`Cidr::parse`], so one text means one block
//! everywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 block. A single address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a string is not an IP address or CIDR block; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

impl Cidr {
    /// Reads `10.0.0.0/8`, `10.1.2.3`, `2001:db8::/32` or `::1`. Host bits set after the prefix
    /// are an error (`10.0.0.1/8`), so a block always means what it says. An IPv4-mapped IPv6
    /// block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError(format!("`{s}` is not an IP address or CIDR block")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            Some(l) => {
                let bad = || CidrError(format!("`{s}`: invalid prefix length `{l}`"));
                if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let n: u8 = l.parse().map_err(|_| bad())?;
                if n > max {
                    return Err(CidrError(format!(
                        "`{s}`: prefix length {n} is longer than {max} bits"
                    )));
                }
                n
            }
        };
        Self::new(addr, len).map_err(|network| {
            CidrError(format!(
                "`{s}` has host bits set; did you mean `{network}/{len}`?"
            ))
        })
    }

    /// The block `addr/len`, or the network address it should have been when `addr` has host
    /// bits set. `len` is capped at the address's width.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, IpAddr> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let cidr = Cidr {
            addr,
            len: len.min(max),
        };
        if cidr.network() != addr {
            return Err(cidr.network());
        }
        if let IpAddr::V6(v6) = addr
            && cidr.len >= 96
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Ok(Cidr {
                addr: IpAddr::V4(v4),
                len: cidr.len - 96,
            });
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.len))),
        }
    }

    /// Whether `ip` is inside the block. `ip` must be canonical (an IPv4-mapped IPv6 address
    /// as IPv4: `IpAddr::to_canonical`), as the policy engine's requests are.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

#[cfg(test)]
mod tests;
