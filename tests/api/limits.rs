//! The page's limits, over HTTP on both databases: the server-side throttle of the Mango
//! buttons (per portal, and per key Mango refused), the per-address limit of unauthenticated
//! browser POSTs before they cost an `app.info`, `X-Forwarded-For` believed only from trusted
//! proxies, and the call log for administrators only.

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::net::trusted_proxies::TrustedProxies;
use mango_callback::portal::throttle::{PAGE_INTERVAL, REFUSED_KEY_PAUSE};
use mango_callback::sandbox::bitrix::SimPortal;

use crate::helpers::{
    spawn_app, spawn_app_tweaked, spawn_instance, TestApp, MANGO_KEY, MANGO_SALT,
};
use crate::on_both_backends;

/// An answer of the app: status, `Retry-After` and the body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn enc(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).expect("encodable form")
}

async fn post(app: &TestApp, path: &str, headers: &[(&str, &str)], body: String) -> Answer {
    let mut req = app
        .http
        .post(format!("{}{}", app.base, path))
        .insert_header(("Content-Type", "application/x-www-form-urlencoded"));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = req.send_body(body).await.expect("request reaches the app");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.body().limit(1 << 20).await.expect("body");
    Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Opens the app page as the portal's iframe does, with extra headers (e.g. X-Forwarded-For).
async fn open_app(
    app: &TestApp,
    portal: &SimPortal,
    user_id: u64,
    headers: &[(&str, &str)],
) -> Answer {
    let req = app
        .b24
        .iframe_request(&portal.member_id, user_id, "DEFAULT", "en");
    post(
        app,
        &format!("/b24/app?{}", req.query_string()),
        headers,
        req.to_form_body(),
    )
    .await
}

fn page_token(body: &str) -> String {
    let marker = "name=\"page_token\" value=\"";
    let start = body.find(marker).expect("the page carries a page token") + marker.len();
    let len = body[start..].find('"').expect("closing quote");
    body[start..start + len].to_owned()
}

async fn check(app: &TestApp, token: &str, form: &[(&str, &str)]) -> Answer {
    post(
        app,
        "/b24/app/mango/check?LANG=en",
        &[("X-Page-Token", token)],
        enc(form),
    )
    .await
}

async fn options(app: &TestApp, token: &str) -> Answer {
    post(
        app,
        "/b24/app/mango/options?LANG=en",
        &[("X-Page-Token", token)],
        String::new(),
    )
    .await
}

fn app_info_calls(app: &TestApp) -> usize {
    app.b24.calls_to("oauth.app.info").len()
}

async fn rapid_mango_requests_from_one_portals_page_reach_mango_once_per_interval(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("rapid").await;
    let token = page_token(&open_app(&app, &p, 1, &[]).await.body);

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = check(&app, &token, &[]).await;
        if r.status == 429 {
            let secs = r.retry_after.expect("Retry-After on a 429");
            assert!((1..=PAGE_INTERVAL.as_secs()).contains(&secs), "{secs}");
            let v = r.json();
            assert_eq!(v["ok"], false);
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("once every 5 seconds"),
                "{v}"
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 429, 429, 429]);
    assert_eq!(
        app.mango.requests().len(),
        1,
        "only the first reached Mango"
    );

    // "Load from Mango" and the form's no-JS check share the portal's turn.
    let r = options(&app, &token).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let mut form = vec![("page_token", token.as_str()), ("action", "check")];
    form.push(("mango_api_key", MANGO_KEY));
    let r = post(&app, "/b24/app/settings?LANG=en", &[], enc(&form)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.retry_after.is_some());
    assert!(
        r.body.contains("5 seconds. Please try again in"),
        "the page says why: {}",
        r.body
    );
    // Another instance on the same database sees the same turn.
    let second = spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let r = check(&second, &token, &[]).await;
    assert_eq!(r.status, 429, "shared across instances: {}", r.body);
    assert_eq!(app.mango.requests().len(), 1, "none of those reached Mango");

    app.advance(PAGE_INTERVAL);
    let r = options(&app, &token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true);
    assert_eq!(app.mango.requests().len(), 3, "groups and lines");
}
on_both_backends!(rapid_mango_requests_from_one_portals_page_reach_mango_once_per_interval);

async fn after_mango_refuses_a_key_the_page_leaves_it_alone_for_two_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("refused").await;
    let token = page_token(&open_app(&app, &p, 1, &[]).await.body);

    let r = check(
        &app,
        &token,
        &[
            ("mango_api_key", MANGO_KEY),
            ("mango_api_salt", "wrong-salt"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["message"]
        .as_str()
        .unwrap_or_default()
        .contains("3102"));
    assert_eq!(app.mango.requests().len(), 1);

    // Past the portal's interval, but the key is still refused: even with the right (stored)
    // salt nothing goes to Mango, where a second bad request would lock the key.
    app.advance(PAGE_INTERVAL + Duration::from_secs(1));
    let r = check(&app, &token, &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let secs = r.retry_after.expect("Retry-After");
    assert!(
        (100..=120).contains(&secs),
        "about two minutes left: {secs}"
    );
    let v = r.json();
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("2 minutes"),
        "{v}"
    );
    assert_eq!(v["retry_after"], secs);
    assert_eq!(options(&app, &token).await.status, 429);
    assert_eq!(app.mango.requests().len(), 1, "Mango was not asked again");

    app.advance(REFUSED_KEY_PAUSE);
    let r = check(&app, &token, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ok"], true, "{}", r.body);
    assert_eq!(app.mango.requests().len(), 2);
}
on_both_backends!(after_mango_refuses_a_key_the_page_leaves_it_alone_for_two_minutes);

/// An app whose address limit is 3 at once and one more every 10 minutes, so a burst counts
/// the same however slow the machine is.
async fn limited_app(backend: Backend, trusted: &str) -> TestApp {
    let trusted = TrustedProxies::parse(trusted).expect("test proxies");
    spawn_app_tweaked(backend, move |s| {
        s.address_burst = 3;
        s.address_refill_every = Duration::from_secs(600);
        s.trusted_proxies = trusted;
    })
    .await
}

async fn a_burst_of_page_opens_from_one_address_is_cut_off_before_it_costs_app_info(
    backend: Backend,
) {
    let app = limited_app(backend, "").await;
    // The installer is the first of the address's three.
    let p = app.installed_portal("burst").await;
    let before = app_info_calls(&app);

    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = open_app(&app, &p, 1, &[]).await;
        if r.status == 429 {
            let secs = r.retry_after.expect("Retry-After on a 429");
            assert!((1..=600).contains(&secs), "{secs}");
            assert!(r.body.contains("Too many requests"), "{}", r.body);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429]);
    let (status, body) = app.open_installer(&p, p.admin_user_id).await;
    assert_eq!(status, 429, "the installer form shares the limit: {body}");
    assert_eq!(
        app_info_calls(&app),
        before + 2,
        "refused requests cost no app.info"
    );

    app.advance(Duration::from_secs(600));
    assert_eq!(open_app(&app, &p, 1, &[]).await.status, 200, "refilled");
    assert_eq!(open_app(&app, &p, 1, &[]).await.status, 429);
    assert_eq!(app_info_calls(&app), before + 3);
}
on_both_backends!(a_burst_of_page_opens_from_one_address_is_cut_off_before_it_costs_app_info);

async fn a_spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_address_limit(
    backend: Backend,
) {
    let app = limited_app(backend, "").await;
    let p = app.installed_portal("spoof").await;
    let before = app_info_calls(&app);
    let mut statuses = Vec::new();
    for i in 0..4 {
        let xff = format!("198.51.100.{i}");
        let fwd = format!("for=203.0.113.{i}");
        let r = open_app(
            &app,
            &p,
            1,
            &[
                ("X-Forwarded-For", xff.as_str()),
                ("Forwarded", fwd.as_str()),
            ],
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429, 429],
        "one address, one allowance"
    );
    assert_eq!(app_info_calls(&app), before + 2);
}
on_both_backends!(
    a_spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_dodge_the_address_limit
);

async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(backend: Backend) {
    let app = limited_app(backend, "127.0.0.1").await;
    let p = app.installed_portal("proxied").await;
    let client = [("X-Forwarded-For", "6.6.6.6, 198.51.100.1")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(open_app(&app, &p, 1, &client).await.status);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200],
        "the proxy's own allowance is not used"
    );
    // The client's own (left) part of the header does not make it someone else.
    let spoofed = [("X-Forwarded-For", "7.7.7.7, 198.51.100.1")];
    assert_eq!(open_app(&app, &p, 1, &spoofed).await.status, 429);
    let other = [("X-Forwarded-For", "198.51.100.2")];
    assert_eq!(open_app(&app, &p, 1, &other).await.status, 200);
}
on_both_backends!(behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance);

async fn the_call_log_is_shown_to_administrators_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("calllog").await;
    let deal = app.b24.add_deal(&p.member_id, None);
    let fired = app
        .b24
        .fire_robot(
            &p.member_id,
            "mango_callback",
            deal,
            &[("phone", "89001234567")],
        )
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
    app.drain().await;
    let link = format!("/crm/deal/details/{deal}/");

    let admin = open_app(&app, &p, 1, &[]).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert!(admin.body.contains(&link), "{}", admin.body);
    assert!(admin.body.contains("*******4567"));

    app.b24.add_user(&p.member_id, 5, false);
    let user = open_app(&app, &p, 5, &[]).await;
    assert_eq!(user.status, 200, "{}", user.body);
    assert!(
        user.body.contains("id=\"readonly\""),
        "the settings summary"
    );
    assert!(user.body.contains("id=\"health\""), "the health line");
    for hidden in [link.as_str(), "*******4567", "call-log", "Recent callbacks"] {
        assert!(!user.body.contains(hidden), "{hidden} shown to a non-admin");
    }
    assert!(!user.body.contains(MANGO_SALT) && !user.body.contains(MANGO_KEY));
}
on_both_backends!(the_call_log_is_shown_to_administrators_only);
