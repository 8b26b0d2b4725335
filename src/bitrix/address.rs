//! Which peers the app may be redirected to: a renamed portal's new REST endpoint must be a public
//! `https` host, never loopback, private, link-local or otherwise non-public (SSRF guard).
//!
//! Both the IP literal of a URL and every address its name resolves to are checked. The check
//! happens before the endpoint is stored; the connection made later resolves the name again, so
//! a name that changes its answers in between (DNS rebinding) is not caught here — the `app.info`
//! confirmation in `client.rs` is the second, independent gate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// A name that does not resolve quickly is refused rather than holding a job.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `ip` is a public unicast address.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0                                   // "this network", 0.0.0.0
        || a == 10                                         // private
        || a == 127                                        // loopback
        || (a == 100 && (64..128).contains(&b))            // CGNAT 100.64/10
        || (a == 169 && b == 254)                          // link-local
        || (a == 172 && (16..32).contains(&b))             // private
        || (a == 192 && b == 0 && c == 0)                  // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)                  // documentation
        || (a == 192 && b == 88 && c == 99)                // 6to4 relay anycast
        || (a == 192 && b == 168)                          // private
        || (a == 198 && (18..20).contains(&b))             // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100)               // documentation
        || (a == 203 && b == 0 && c == 113)                // documentation
        || a >= 224; // multicast, reserved, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // An IPv4 address in IPv6 clothing is judged as IPv4.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // Only global unicast (2000::/3) is public; that excludes ::, ::1, fc00::/7, fe80::/10,
    // fec0::/10, ff00::/8 and the NAT64 prefix 64:ff9b::/96.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8; // 2001:db8::/32
    let teredo = s[0] == 0x2001 && s[1] == 0; // 2001::/32 tunnels to any IPv4 address
    let orchid = s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010; // 2001:10::/28
    if documentation || teredo || orchid {
        return false;
    }
    if s[0] == 0x2002 {
        // 6to4 embeds an IPv4 address, which must be public itself.
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    true
}

/// Checks a redirect target's scheme and address. `allow_private` (tests and the sandbox only)
/// admits plain `http` and loopback or private hosts, as the simulators run on 127.0.0.1.
pub async fn check_peer(url: &url::Url, allow_private: bool) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the URL carries credentials".into());
    }
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        other => return Err(format!("scheme {other:?} is not https")),
    }
    if allow_private {
        return url
            .host()
            .map(|_| ())
            .ok_or_else(|| "the URL has no host".into());
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(name)) => {
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                .await
                .map_err(|_| format!("{name} did not resolve within {RESOLVE_TIMEOUT:?}"))?
                .map_err(|e| format!("{name} does not resolve: {e}"))?
                .map(|sa| sa.ip())
                .collect()
        }
        None => return Err("the URL has no host".into()),
    };
    if addresses.is_empty() {
        return Err("the host resolves to no address".into());
    }
    match addresses.iter().find(|ip| !is_public_ip(**ip)) {
        Some(ip) => Err(format!(
            "the host is or resolves to a non-public address ({ip})"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        let table = [
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("185.23.124.10", true),
            ("2a00:1450:4001:82b::200e", true),
            ("0.0.0.0", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("172.32.0.1", true),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.128.0.1", true),
            ("169.254.169.254", false),
            ("192.0.2.1", false),
            ("198.18.0.1", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("::", false),
            ("::1", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::a00:1", false),
            ("2001:db8::1", false),
            ("2001::1", false),
            ("2002:0a00:0001::1", false),
            ("2002:0808:0808::1", true),
        ];
        for (ip, public) in table {
            let parsed: IpAddr = ip.parse().expect(ip);
            assert_eq!(is_public_ip(parsed), public, "{ip}");
        }
    }

    #[actix_web::test]
    async fn redirect_targets_must_be_public_https_unless_private_peers_are_allowed() {
        let table = [
            ("https://8.8.8.8/rest/", true),
            ("https://[2a00:1450:4001:82b::200e]/rest/", true),
            ("http://8.8.8.8/rest/", false),
            ("ftp://8.8.8.8/rest/", false),
            ("https://user:pw@8.8.8.8/rest/", false),
            ("https://127.0.0.1/rest/", false),
            ("https://127.0.0.1:8443/rest/", false),
            ("https://localhost/rest/", false),
            ("https://10.0.0.5/rest/", false),
            ("https://172.20.1.1/rest/", false),
            ("https://192.168.0.10/rest/", false),
            ("https://100.100.100.100/rest/", false),
            ("https://169.254.169.254/rest/", false),
            ("https://0.0.0.0/rest/", false),
            ("https://[::1]/rest/", false),
            ("https://[fd00::1]/rest/", false),
            ("https://[fe80::1]/rest/", false),
            ("https://[::ffff:127.0.0.1]/rest/", false),
            ("https://0x7f.1/rest/", false),
            ("https://2130706433/rest/", false),
            ("https://does-not-exist.invalid/rest/", false),
        ];
        for (raw, allowed) in table {
            let url = url::Url::parse(raw).expect(raw);
            let verdict = check_peer(&url, false).await;
            assert_eq!(verdict.is_ok(), allowed, "{raw}: {verdict:?}");
        }
        // The switch for tests and the sandbox admits the simulators' plain-http loopback.
        let sim = url::Url::parse("http://127.0.0.1:4321/p/new/rest/").expect("url");
        assert!(check_peer(&sim, true).await.is_ok());
        assert!(check_peer(&sim, false).await.is_err());
    }
}
