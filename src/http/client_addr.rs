//! Who is calling: the client address for log lines and the per-address limit, taken from
//! `X-Forwarded-For` / `Forwarded` only when the TCP peer is a configured trusted proxy.
//!
//! Anyone can send these headers, so believing them from any peer (actix's
//! `realip_remote_addr`) lets a caller pick the address we log and limit. With trusted proxies
//! configured (`APP_TRUSTED_PROXIES`), the chain is walked from the right — the entries our own
//! proxies appended — and the first address that is not itself a trusted proxy is the client.
//! Entries to its left were written by the client and are never believed.

use std::net::{IpAddr, SocketAddr};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use super::page::error_html;
use super::request::lang_of;
use crate::context::Context;
use crate::net::trusted_proxies::{canonical, TrustedProxies};

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

/// The caller's address for security log lines (see [`client_ip_of`]).
pub fn peer(req: &HttpRequest) -> String {
    client_ip_of(req).map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// The client's address: the TCP peer, or what a trusted proxy (`APP_TRUSTED_PROXIES`) says
/// it forwarded for. `None` only when the request has no TCP peer (in-process handler tests).
pub fn client_ip_of(req: &HttpRequest) -> Option<std::net::IpAddr> {
    of_request(
        req.peer_addr(),
        req.headers(),
        req.app_data::<web::Data<crate::context::Context>>(),
    )
}

/// The per-address gate of the unauthenticated browser POSTs, taken before they cost an
/// `app.info` request: `Some(429 page with Retry-After)` when this address is over its limit.
pub fn limit_address(req: &HttpRequest, ctx: &crate::context::Context) -> Option<HttpResponse> {
    let ip = client_ip_of(req)?;
    let wait = ctx.shared.address_limiter.take(ip).err()?;
    let secs = crate::net::address_limit::retry_after_secs(wait);
    let lang = lang_of(req);
    let message = format!(
        "{} {secs} {}",
        lang.t(
            "Слишком много запросов с вашего адреса. Повторите через",
            "Too many requests from your address. Please try again in",
        ),
        lang.t("с.", "s."),
    );
    let mut resp = error_html(
        actix_web::http::StatusCode::TOO_MANY_REQUESTS,
        lang,
        &message,
    );
    resp.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(secs),
    );
    Some(crate::error::refuse(
        resp,
        format!("too many requests from this address; retry after {secs} s"),
    ))
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
