//! Peer addresses as users write them: small address helpers shared by
//! the download log, the server and its kernel look-ups.
//!
//! A dual-stack listener (`--bind ::`) sees an IPv4 client as an
//! IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]:58422`, RFC 4291 §2.5.5.2).
//! Records, metrics, fault-rule matching and per-IP limits all use the
//! unmapped form (`127.0.0.1:58422`); only the kernel look-ups of
//! [`crate::serve::delivery`] keep the socket's own form.

use std::net::{IpAddr, SocketAddr};

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4; any other
/// address unchanged.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether `a` and `b` are the same host, mapped or not.
pub fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_unmapped_and_others_kept() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:58422".parse().unwrap();
        assert_eq!(unmap(mapped).to_string(), "127.0.0.1:58422");
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(unmap(v6), v6);
        let v4: SocketAddr = "127.0.0.2:21".parse().unwrap();
        assert_eq!(unmap(v4), v4);
        assert!(same_ip(mapped.ip(), "127.0.0.1".parse().unwrap()));
        assert!(!same_ip(mapped.ip(), "127.0.0.2".parse().unwrap()));
    }
}
