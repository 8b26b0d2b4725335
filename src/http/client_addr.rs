//! Who is calling: the client address for log lines and the per-address limit, taken from
//! `X-Forwarded-For` / `Forwarded` only when the TCP peer is a configured trusted proxy.
//!
//! Anyone can send these headers, so believing them from any peer (actix's
//! `realip_remote_addr`) lets a caller pick the address we log and limit. With trusted proxies
//! configured (`APP_TRUSTED_PROXIES`), the chain is walked from the right — the entries our own
//! proxies appended — and the first address that is not itself a trusted proxy is the client.
//! Entries to its left were written by the client and are never believed.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpMessage};
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use crate::context::Context;

/// One `APP_TRUSTED_PROXIES` entry: an address or a CIDR block, kept as a masked network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack listener reports) is the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The proxies whose forwarding headers are believed. Empty (the default) trusts nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

impl TrustedProxies {
    /// Parses a comma-separated list of IPs and CIDRs (`10.0.0.1, 10.1.0.0/16, fd00::/8`).
    /// The error names the first bad entry, for a one-line configuration message.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            nets.push(parse_net(entry).ok_or_else(|| {
                format!(
                    "{entry:?} is not an IP address or CIDR block \
                     (expected e.g. 10.0.0.1, 10.0.0.0/8 or fd00::/8, comma-separated)"
                )
            })?);
        }
        Ok(TrustedProxies(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(ip))
    }
}

fn parse_net(entry: &str) -> Option<Net> {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => {
            // Plain decimal only: "+8" or "08" are typos rather than prefixes.
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?))
        }
        None => (entry.parse::<IpAddr>().ok()?, None),
    };
    // A mapped IPv6 address is stored as IPv4 (its prefix shifted), so one entry matches both.
    let (addr, prefix) = match (addr, canonical(addr)) {
        (IpAddr::V6(_), IpAddr::V4(v4)) => (
            IpAddr::V4(v4),
            match prefix {
                Some(p) if p < 96 => return None,
                Some(p) => Some(p - 96),
                None => None,
            },
        ),
        (a, _) => (a, prefix),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return None;
    }
    // Host bits are masked off: "10.0.0.7/8" means 10.0.0.0/8.
    let addr = match addr {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), prefix))),
    };
    Some(Net { addr, prefix })
}

/// One hop of a forwarding header: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted (`Forwarded`). `unknown`, obfuscated names and garbage are `None`.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let s = raw.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

/// The hops of the forwarding chain, left (furthest) to right (nearest), as raw strings.
///
/// `X-Forwarded-For` is what nginx, Caddy and the usual load balancers append to; `Forwarded`
/// (RFC 7239) is read only when no `X-Forwarded-For` came, so a client cannot add a second,
/// unappended header of the other kind to choose its address.
fn chain(headers: &HeaderMap) -> Vec<String> {
    let xff: Vec<String> = headers
        .get_all("x-forwarded-for")
        .flat_map(|v| {
            // A header value that is not text cannot be read: it becomes one unreadable hop.
            v.to_str()
                .unwrap_or("?")
                .split(',')
                .map(|h| h.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    headers
        .get_all("forwarded")
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("?")
                .split(',')
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .map(|(_, v)| v.trim().to_owned())
                        .unwrap_or_else(|| "?".to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the right-most
/// hop of the forwarding chain that is not a trusted proxy.
///
/// When every hop is trusted, the left-most is the client. An unreadable hop stops the walk at
/// the last trusted address seen: whatever lies beyond it cannot be attributed to anyone.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut last = peer;
    for hop in chain(headers).iter().rev() {
        match parse_hop(hop) {
            Some(ip) if trusted.contains(ip) => last = ip,
            Some(ip) => return ip,
            None => return last,
        }
    }
    last
}

/// [`client_ip`] for a request: its TCP peer, its headers and the app's settings (without the
/// app's [`Context`], as in bare handler tests, nobody is trusted).
pub fn of_request(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    ctx: Option<&web::Data<Context>>,
) -> Option<IpAddr> {
    let peer = peer?.ip();
    Some(match ctx {
        Some(c) => client_ip(peer, headers, &c.shared.settings.trusted_proxies),
        None => canonical(peer),
    })
}

/// The request span of `TracingLogger`, with `http.client_ip` from [`of_request`]: the default
/// span takes it from actix's `realip_remote_addr`, which believes any caller's
/// `X-Forwarded-For`. Only the path is recorded, not the query string.
pub struct RootSpan;

impl RootSpanBuilder for RootSpan {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        let client = of_request(
            request.peer_addr(),
            request.headers(),
            request.app_data::<web::Data<Context>>(),
        )
        .map_or_else(String::new, |ip| ip.to_string());
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map_or_else(String::new, ToString::to_string);
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %request.match_pattern().unwrap_or_else(|| "default".into()),
            http.target = %request.path(),
            http.client_ip = %client,
            http.status_code = tracing::field::Empty,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            request_id = %request_id,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    /// Records the `http.client_ip` of every new span.
    #[derive(Clone, Default)]
    struct ClientIps(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientIps {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _id: &tracing::span::Id,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visit<'a>(&'a mut Vec<String>);
            impl tracing::field::Visit for Visit<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "http.client_ip" {
                        self.0.push(format!("{v:?}"));
                    }
                }
            }
            if let Ok(mut seen) = self.0.lock() {
                attrs.record(&mut Visit(&mut seen));
            }
        }
    }

    #[test]
    fn the_request_span_logs_the_peer_not_an_untrusted_x_forwarded_for() {
        use tracing_subscriber::layer::SubscriberExt;
        let seen = ClientIps::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone());
        let req = actix_web::test::TestRequest::default()
            .peer_addr("203.0.113.9:5000".parse().expect("addr"))
            .insert_header(("X-Forwarded-For", "6.6.6.6"))
            .insert_header(("Forwarded", "for=7.7.7.7"))
            .to_srv_request();
        tracing::subscriber::with_default(subscriber, || {
            let _span = RootSpan::on_request_start(&req);
        });
        let seen = seen.0.lock().expect("not poisoned").clone();
        assert_eq!(seen, vec!["203.0.113.9".to_owned()]);
    }

    #[test]
    fn trusted_proxy_lists_parse_ips_and_cidrs_and_name_a_bad_entry() {
        let t = TrustedProxies::parse(" 10.0.0.1, 192.168.0.0/16 ,fd00::/8,").expect("valid");
        for (addr, inside) in [
            ("10.0.0.1", true),
            ("10.0.0.2", false),
            ("192.168.44.5", true),
            ("192.169.0.1", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:192.168.1.1", true),
        ] {
            assert_eq!(t.contains(ip(addr)), inside, "{addr}");
        }
        assert!(TrustedProxies::parse("").expect("empty").is_empty());
        let all = TrustedProxies::parse("0.0.0.0/0").expect("all v4");
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let host_bits = TrustedProxies::parse("10.9.9.9/8").expect("masked");
        assert!(host_bits.contains(ip("10.1.2.3")));
        let mapped = TrustedProxies::parse("::ffff:10.0.0.0/104").expect("mapped cidr");
        assert!(mapped.contains(ip("10.200.0.1")) && !mapped.contains(ip("11.0.0.1")));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0",
            "proxy.local",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1.2.3.4:80",
            "10.0.0.0/8/8",
        ] {
            let e = TrustedProxies::parse(&format!("10.0.0.1,{bad}")).expect_err(bad);
            assert!(e.contains(bad) && !e.contains('\n'), "{e}");
        }
    }

    /// Peer, headers, trusted proxies, the expected client.
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a TrustedProxies,
        &'a str,
    );

    #[test]
    fn the_client_address_believes_forwarding_headers_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 2001:db8::1").expect("valid");
        let none = TrustedProxies::default();
        // (peer, headers, trusted, expected client)
        let cases: Vec<Case> = vec![
            // Nobody is trusted by default: the headers are the client's word, ignored.
            (
                "203.0.113.9",
                vec![("X-Forwarded-For", "1.1.1.1")],
                &none,
                "203.0.113.9",
            ),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "1.1.1.1")],
                &none,
                "10.0.0.5",
            ),
            // A peer outside the list is the client even with a list configured.
            (
                "203.0.113.9",
                vec![("X-Forwarded-For", "1.1.1.1")],
                &proxies,
                "203.0.113.9",
            ),
            // A trusted proxy: the right-most untrusted hop; the client's spoofed left part is ignored.
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "6.6.6.6, 198.51.100.7")],
                &proxies,
                "198.51.100.7",
            ),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "198.51.100.7, 10.1.1.1")],
                &proxies,
                "198.51.100.7",
            ),
            (
                "10.0.0.5",
                vec![
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-For", "198.51.100.7"),
                ],
                &proxies,
                "198.51.100.7",
            ),
            // Ports and brackets.
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "198.51.100.7:4711")],
                &proxies,
                "198.51.100.7",
            ),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "[2001:db8::77]:443")],
                &proxies,
                "2001:db8::77",
            ),
            (
                "::ffff:10.0.0.5",
                vec![("X-Forwarded-For", "198.51.100.7")],
                &proxies,
                "198.51.100.7",
            ),
            (
                "2001:db8::1",
                vec![("X-Forwarded-For", "198.51.100.7")],
                &proxies,
                "198.51.100.7",
            ),
            // All hops trusted: the furthest one.
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "10.2.2.2, 10.1.1.1")],
                &proxies,
                "10.2.2.2",
            ),
            // No header, an empty one, or an unreadable hop: the last trusted address seen.
            ("10.0.0.5", vec![], &proxies, "10.0.0.5"),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "")],
                &proxies,
                "10.0.0.5",
            ),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "198.51.100.7, unknown")],
                &proxies,
                "10.0.0.5",
            ),
            (
                "10.0.0.5",
                vec![("X-Forwarded-For", "6.6.6.6, garbage, 10.1.1.1")],
                &proxies,
                "10.1.1.1",
            ),
            // RFC 7239, used only without X-Forwarded-For.
            (
                "10.0.0.5",
                vec![(
                    "Forwarded",
                    "for=6.6.6.6, for=198.51.100.7;proto=https;by=10.0.0.5",
                )],
                &proxies,
                "198.51.100.7",
            ),
            (
                "10.0.0.5",
                vec![("Forwarded", "for=\"[2001:db8:cafe::17]:4711\"")],
                &proxies,
                "2001:db8:cafe::17",
            ),
            (
                "10.0.0.5",
                vec![("Forwarded", "for=_hidden")],
                &proxies,
                "10.0.0.5",
            ),
            (
                "10.0.0.5",
                vec![
                    ("Forwarded", "for=6.6.6.6"),
                    ("X-Forwarded-For", "198.51.100.7"),
                ],
                &proxies,
                "198.51.100.7",
            ),
        ];
        for (peer, hs, trusted, want) in cases {
            let got = client_ip(ip(peer), &headers(&hs), trusted);
            assert_eq!(got, ip(want), "peer {peer}, headers {hs:?}");
        }
    }
}
