//! Who is on the other end: the client's address and whether it came over
//! HTTPS, seen through trusted reverse proxies (`--trusted-proxies`).
//!
//! Behind a proxy every connection comes from the proxy, so per-address
//! limits would lump every user together. A proxy says who it forwards
//! for in `X-Forwarded-For` (or `Forwarded`), but so can anyone: the
//! headers are believed only on connections from a trusted proxy, and
//! only as far as trusted hops vouch for them. Each proxy appends the
//! address it received the request from, so the list is read from the
//! right: trusted hops are skipped, and the first untrusted address is the
//! client. Anything further left was written by the client itself.
//!
//! `X-Forwarded-For` wins when both headers are present: it is what
//! nginx, HAProxy, Caddy, Traefik and Envoy append to. A proxy that writes
//! only `Forwarded` must drop a client's `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use warp::http::HeaderMap;

/// The client as the limits and the cookie see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The client reached us over HTTPS: said by a trusted proxy
    /// (`X-Forwarded-Proto: https`).
    pub forwarded_https: bool,
}

/// Resolves the client of a connection from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientAddr {
    let peer = canonical(peer);
    let direct = ClientAddr {
        ip: peer,
        forwarded_https: false,
    };
    if !is_trusted(peer, trusted) {
        return direct;
    }
    let xff = header_values(headers, "x-forwarded-for");
    let hops: Vec<Option<IpAddr>> = if !xff.is_empty() {
        xff.iter()
            .flat_map(|v| v.split(','))
            .map(|s| parse_node(s.trim()))
            .collect()
    } else {
        forwarded_elements(headers)
            .map(|e| param(e, "for").and_then(parse_node))
            .collect()
    };
    // Right to left: each trusted hop vouches for the one before it. An
    // entry that is no address (`unknown`, an obfuscated name) ends the
    // walk at the last hop we could vouch for.
    let mut ip = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(addr) => {
                ip = canonical(*addr);
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    ClientAddr {
        ip,
        forwarded_https: forwarded_proto(headers).is_some_and(|p| p.eq_ignore_ascii_case("https")),
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack socket
/// reports) are the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The elements of every `Forwarded` header, in order (RFC 7239).
fn forwarded_elements(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
}

/// A parameter of one `Forwarded` element, unquoted.
fn param<'a>(element: &'a str, key: &str) -> Option<&'a str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The protocol the nearest trusted proxy received the request over: the
/// right-most `X-Forwarded-Proto` entry, else the right-most `proto=`.
fn forwarded_proto(headers: &HeaderMap) -> Option<&str> {
    let xfp = header_values(headers, "x-forwarded-proto");
    if !xfp.is_empty() {
        return xfp
            .iter()
            .flat_map(|v| v.split(','))
            .next_back()
            .map(str::trim);
    }
    forwarded_elements(headers)
        .last()
        .and_then(|e| param(e, "proto"))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:5678`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|v6| v6.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::test_headers as headers;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=5.6.7.8;proto=https"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = resolve(ip("203.0.113.9"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(c.ip, ip("203.0.113.9"));
        assert!(!c.forwarded_https);
        let c = resolve(ip("10.0.0.1"), &h, &[]);
        assert_eq!(c.ip, ip("10.0.0.1"), "no proxies are trusted by default");
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "fd00::/8"]);
        // The client forged the first entry; our proxies appended the rest.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        let c = resolve(ip("10.0.0.1"), &h, &trusted);
        assert_eq!(c.ip, ip("198.51.100.7"));
        // Split across header lines, with ports and brackets.
        let h = headers(&[
            ("x-forwarded-for", "[2001:db8::5]:4711"),
            ("x-forwarded-for", "10.2.2.2:80"),
        ]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted).ip, ip("2001:db8::5"));
        // Every hop trusted: the farthest one.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted).ip, ip("10.9.9.9"));
        // Garbage ends the walk at the last hop vouched for.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.3.3.3")]);
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted).ip, ip("10.3.3.3"));
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted).ip,
            ip("10.0.0.1")
        );
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https;by=127.0.0.1",
        )]);
        let c = resolve(ip("127.0.0.1"), &h, &trusted);
        assert_eq!(c.ip, ip("2001:db8:cafe::17"));
        assert!(c.forwarded_https);
        let both = headers(&[
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(
            resolve(ip("127.0.0.1"), &both, &trusted).ip,
            ip("198.51.100.1")
        );
    }

    #[test]
    fn the_nearest_proxy_says_whether_it_was_https() {
        let trusted = nets(&["127.0.0.0/8"]);
        let https = |v: &str| {
            resolve(
                ip("127.0.0.1"),
                &headers(&[("x-forwarded-proto", v)]),
                &trusted,
            )
            .forwarded_https
        };
        assert!(https("https"));
        assert!(https("HTTPS"));
        assert!(https("http, https"));
        assert!(!https("https, http"));
        assert!(!https("http"));
    }

    #[test]
    fn mapped_ipv4_is_ipv4() {
        assert_eq!(canonical(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }
}
