//! Secrets at rest: sealed values bound to their place, no secret in a Debug print, key rotation.

use mango_callback::config::{Settings, LOCAL_SECRET_KEY};
use mango_callback::crypto::{Cipher, SealedColumn, SecretKey, Slot};
use mango_callback::db::Backend;
use mango_callback::sandbox::LocalSettings;

use crate::helpers::{spawn_app, start_instance, TestApp, MANGO_KEY};
use crate::on_both_backends;

async fn a_sealed_token_copied_into_another_portals_row_does_not_open(backend: Backend) {
    let app = spawn_app(backend).await;
    let alpha = app.installed_portal("alpha").await;
    let beta = app.installed_portal("beta").await;
    // Someone who can write the database (but has no key) copies alpha's sealed application
    // token into beta's row, hoping to drive beta's robot with alpha's token.
    let sealed_alpha = app
        .portal_row(&alpha.member_id)
        .await
        .expect("alpha")
        .application_token
        .expect("sealed");
    let beta_id = beta.member_id.clone();
    app.shared
        .db
        .run(move |c| {
            use diesel::prelude::*;
            use mango_callback::db::schema::portals;
            diesel::update(portals::table.find(&beta_id))
                .set(portals::application_token.eq(&sealed_alpha))
                .execute(c)
        })
        .await
        .expect("copied");
    let deal = app.b24.add_deal(&beta.member_id, None);
    let body = app
        .robot_body(&beta, deal, &[("phone", "89001234567")], Default::default())
        .replace(&beta.application_token, &alpha.application_token);
    let (status, answer) = app.post_form("/b24/robot", body).await;
    assert_eq!(status, 401, "{answer}");
    app.drain().await;
    assert!(app.mango.callbacks().is_empty(), "no call placed");
    assert!(app.b24.event_sends(&beta.member_id).is_empty());
}
on_both_backends!(a_sealed_token_copied_into_another_portals_row_does_not_open);

/// Every secret the structs below hold; none may appear in their Debug prints.
const SECRETS: [&str; 5] = [
    "ACCESS-SECRET-1",
    "REFRESH-SECRET-2",
    "APPTOKEN-SECRET-3",
    "SALT-SECRET-4",
    "CLIENT-SECRET-5",
];

fn assert_no_secret(what: &str, printed: &str) {
    for s in SECRETS {
        assert!(!printed.contains(s), "{what} shows {s}: {printed}");
    }
}

async fn debug_prints_of_structs_that_hold_secrets_show_none_of_them(backend: Backend) {
    use mango_callback::http::request::AuthBlock;
    use mango_callback::portal::store::InstallData;

    let auth = AuthBlock {
        member_id: Some("m1".into()),
        application_token: Some(SECRETS[2].into()),
        access_token: Some(SECRETS[0].into()),
        refresh_token: Some(SECRETS[1].into()),
        ..Default::default()
    };
    assert_no_secret("AuthBlock", &format!("{auth:?}"));
    assert!(format!("{auth:?}").contains("m1"), "still useful");

    let install = InstallData {
        member_id: "m1".into(),
        domain: "d".into(),
        client_endpoint: "e".into(),
        server_endpoint: "s".into(),
        access_token: Some(SECRETS[0].into()),
        refresh_token: Some(SECRETS[1].into()),
        expires_in: Some(3600),
        application_token: Some(SECRETS[2].into()),
        scope: "crm".into(),
        status: "F".into(),
        lang: None,
    };
    assert_no_secret("InstallData", &format!("{install:?}"));

    let tokens = mango_callback::bitrix::oauth::NewTokens {
        access_token: SECRETS[0].into(),
        refresh_token: SECRETS[1].into(),
        expires_in: 3600,
        client_endpoint: None,
        scope: None,
    };
    assert_no_secret("NewTokens", &format!("{tokens:?}"));
    let answer: mango_callback::bitrix::oauth::B24TokenResponse = serde_json::from_value(
        serde_json::json!({ "access_token": SECRETS[0], "refresh_token": SECRETS[1], "expires_in": 3600 }),
    )
    .expect("token answer");
    assert_no_secret("B24TokenResponse", &format!("{answer:?}"));

    let creds = mango_callback::mango::Credentials::new("key", SECRETS[3]);
    assert_no_secret("Credentials", &format!("{creds:?}"));

    use clap::Parser;
    let cli = mango_callback::config::Cli::try_parse_from([
        "mango-callback",
        "--secret-key",
        "00112233445566778899aabbccddeeffCLIENT-SECRET-5",
        "--b24-client-secret",
        SECRETS[4],
    ])
    .expect("parses");
    assert_no_secret("Cli", &format!("{cli:?}"));
    let cli = mango_callback::config::Cli::try_parse_from([
        "mango-callback",
        "rotate-key",
        "--old-key",
        SECRETS[4],
    ])
    .expect("parses");
    assert_no_secret("Cli rotate-key", &format!("{cli:?}"));
    let mut settings = Settings::for_local("sqlite://x.db", "http://o", "http://m");
    settings.b24_client_secret = Some(SECRETS[4].into());
    let printed = format!("{settings:?}");
    assert_no_secret("Settings", &printed);
    assert!(!printed.contains(LOCAL_SECRET_KEY), "{printed}");

    use mango_callback::http::settings_page::page_token::PageToken;
    let cipher = Cipher::new(&SecretKey::generate());
    let token = PageToken::new("m1", 1, true, 0);
    let encoded = token.encode(&cipher);
    let mac = encoded.rsplit('.').next().expect("mac");
    assert!(!format!("{token:?}").contains(mac));

    // What the database gives back: sealed values are not shown either, not even sealed.
    let app = spawn_app(backend).await;
    let p = app.installed_portal("debug").await;
    let row = app.portal_row(&p.member_id).await.expect("portal");
    let printed = format!("{row:?}");
    for sealed in [
        &row.access_token,
        &row.refresh_token,
        &row.application_token,
    ] {
        let sealed = sealed.as_deref().expect("stored");
        assert!(
            !printed.contains(sealed),
            "Portal shows {sealed}: {printed}"
        );
    }
    assert!(printed.contains(&p.member_id), "still useful: {printed}");
    let mid = p.member_id.clone();
    let settings = app
        .shared
        .db
        .run(move |c| mango_callback::portal::store::settings(c, &mid))
        .await
        .expect("db")
        .expect("settings");
    let sealed = settings.mango_api_salt.clone().expect("salt");
    let printed = format!("{settings:?}");
    assert!(
        !printed.contains(&sealed),
        "PortalSettings shows {sealed}: {printed}"
    );

    // The simulators' credentials, printed by the sandbox and test failures.
    let login = app.b24.login(&p.member_id, 1);
    let printed = format!("{login:?}");
    assert!(!printed.contains(&login.refresh_token) && !printed.contains(&login.access_token));
    let iframe = app.b24.iframe_request(&p.member_id, 1, "DEFAULT", "ru");
    let printed = format!("{iframe:?}");
    for field in ["AUTH_ID", "REFRESH_ID", "APPLICATION_TOKEN"] {
        let v = iframe.form_value(field).expect("field");
        assert!(
            !printed.contains(v),
            "IframeRequest shows {field}: {printed}"
        );
    }
    let printed = format!("{p:?}");
    assert!(
        !printed.contains(&p.application_token),
        "SimPortal: {printed}"
    );
}
on_both_backends!(debug_prints_of_structs_that_hold_secrets_show_none_of_them);

/// Every sealed value as stored: (column, portal, value), in a stable order.
async fn sealed_values(app: &TestApp) -> Vec<(SealedColumn, String, String)> {
    app.shared
        .db
        .run(|c| -> diesel::QueryResult<_> {
            use diesel::prelude::*;
            use mango_callback::db::schema::{portal_settings, portals};
            type Row = (String, Option<String>, Option<String>, Option<String>);
            let mut out = Vec::new();
            let rows: Vec<Row> = portals::table
                .select((
                    portals::member_id,
                    portals::access_token,
                    portals::refresh_token,
                    portals::application_token,
                ))
                .order(portals::member_id)
                .load(c)?;
            for (mid, access, refresh, app_token) in rows {
                for (column, v) in [
                    (SealedColumn::AccessToken, access),
                    (SealedColumn::RefreshToken, refresh),
                    (SealedColumn::ApplicationToken, app_token),
                ] {
                    out.extend(v.map(|v| (column, mid.clone(), v)));
                }
            }
            let rows: Vec<(String, Option<String>)> = portal_settings::table
                .select((portal_settings::member_id, portal_settings::mango_api_salt))
                .order(portal_settings::member_id)
                .load(c)?;
            for (mid, salt) in rows {
                out.extend(salt.map(|v| (SealedColumn::MangoApiSalt, mid, v)));
            }
            Ok(out)
        })
        .await
        .expect("db")
}

/// Runs the release binary's `rotate-key` with only these variables set.
async fn rotate_key(db_url: &str, old: &str, new: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mango-callback"));
    let cwd = tempfile::tempdir().expect("temp dir"); // no .env from the repository
    cmd.arg("rotate-key")
        .env_clear()
        .current_dir(cwd.path())
        .env("DATABASE_URL", db_url)
        .env("APP_SECRET_KEY", new)
        .env("APP_OLD_SECRET_KEY", old);
    let out = actix_web::rt::task::spawn_blocking(move || cmd.output())
        .await
        .expect("task")
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn rotate_key_reseals_every_secret_and_the_app_runs_on_with_the_new_key(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("rotate").await;
    app.installed_portal("rotate-too").await;
    let before = sealed_values(&app).await;
    assert_eq!(before.len(), 8, "4 sealed values per portal: {before:?}");
    let new_key = SecretKey::generate();
    let new_text = new_key.expose_text().to_owned();

    // A wrong old key: refused, nothing changed.
    let wrong = SecretKey::generate();
    let (ok, _, err) = rotate_key(&app.db_url, wrong.expose_text(), &new_text).await;
    assert!(!ok, "refused");
    assert!(
        err.contains("8 stored value(s) do not open with the old key"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "portal_settings.mango_api_salt of portal {}",
            p.member_id
        )),
        "{err}"
    );
    assert_eq!(sealed_values(&app).await, before, "nothing changed");

    // A weak new key: refused before anything is touched.
    let (ok, _, err) = rotate_key(&app.db_url, LOCAL_SECRET_KEY, "new-password-2026").await;
    assert!(!ok);
    assert!(
        err.contains("APP_SECRET_KEY: expected at least 32 random bytes"),
        "{err}"
    );
    assert_eq!(sealed_values(&app).await, before, "nothing changed");

    let (ok, out, err) = rotate_key(&app.db_url, LOCAL_SECRET_KEY, &new_text).await;
    assert!(ok, "{out}{err}");
    for column in SealedColumn::ALL {
        assert!(out.contains(&format!("{column} 2")), "{out}");
    }
    let after = sealed_values(&app).await;
    assert_eq!(after.len(), 8);
    let old = Cipher::new(&SecretKey::parse(LOCAL_SECRET_KEY).expect("key"));
    let new = Cipher::new(&new_key);
    for (column, mid, sealed) in &after {
        let slot = Slot::new(*column, mid);
        assert!(
            old.open(slot, sealed).is_err(),
            "old key still opens {column}"
        );
        assert!(new.open(slot, sealed).is_ok(), "new key opens {column}");
    }
    // Running it again is refused, with the likely reason.
    let (ok, _, err) = rotate_key(&app.db_url, LOCAL_SECRET_KEY, &new_text).await;
    assert!(!ok);
    assert!(err.contains("already open with the new key"), "{err}");

    // An instance with the new key: the application token verifies the robot call, the refresh
    // token renews the (expired) access token, and Mango accepts the callback signed with the
    // salt, then the app verifies Mango's signed result with it.
    let mut settings = Settings::for_local(&app.db_url, &app.b24.url(), &app.mango.api_url());
    settings.secret_key = new_key;
    settings.b24_requests_per_second = 20.0;
    let rotated = start_instance(settings, &app.b24, &app.mango, None).await;
    app.b24.expire_access_tokens(&p.member_id);
    let refreshes = app.b24.refresh_count(&p.member_id);
    let deal = app.b24.add_deal(&p.member_id, None);
    let body = app.robot_body(&p, deal, &[("phone", "89001234567")], Default::default());
    let (status, answer) = rotated.post_form("/b24/robot", body).await;
    assert_eq!(status, 200, "{answer}");
    rotated.drain().await;
    assert!(app.b24.refresh_count(&p.member_id) > refreshes, "refreshed");
    let calls = app.mango.callbacks();
    assert_eq!(calls.len(), 1, "Mango accepted the signed command");
    let sends = app.b24.event_sends(&p.member_id);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0]["RETURN_VALUES"]["result"], "started");
    let command_id = calls[0]["command_id"].as_str().expect("command id");
    let mango_url = format!("{}/mango", rotated.base);
    assert_eq!(
        app.mango
            .post_result(&mango_url, MANGO_KEY, command_id, 1100)
            .await,
        Ok(200)
    );
}
on_both_backends!(rotate_key_reseals_every_secret_and_the_app_runs_on_with_the_new_key);

/// `v1:` as the code before #8 sealed: no associated data, key hashed from the key's text.
fn legacy_seal(key_text: &str, plain: &str) -> String {
    use aes_gcm::aead::{Aead, KeyInit};
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"mango-callback/seal\0");
    h.update(key_text.as_bytes());
    let key: [u8; 32] = h.finalize().into();
    let nonce = [9u8; 12];
    let ct = aes_gcm::Aes256Gcm::new(&key.into())
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes())
        .expect("seals");
    let raw = [nonce.as_slice(), &ct].concat();
    format!(
        "v1:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    )
}

async fn values_sealed_before_binding_are_rebound_at_start_and_keep_working(backend: Backend) {
    let app = spawn_app(backend).await;
    let p = app.installed_portal("legacy").await;
    // The portal's application token and salt as the previous release stored them.
    let (mid, token) = (p.member_id.clone(), p.application_token.clone());
    let (app_v1, salt_v1) = (
        legacy_seal(LOCAL_SECRET_KEY, &token),
        legacy_seal(LOCAL_SECRET_KEY, crate::helpers::MANGO_SALT),
    );
    let (a, s) = (app_v1.clone(), salt_v1.clone());
    app.shared
        .db
        .run(move |c| -> diesel::QueryResult<_> {
            use diesel::prelude::*;
            use mango_callback::db::schema::{portal_settings, portals};
            diesel::update(portals::table.find(&mid))
                .set(portals::application_token.eq(&a))
                .execute(c)?;
            diesel::update(portal_settings::table.find(&mid))
                .set(portal_settings::mango_api_salt.eq(&s))
                .execute(c)
        })
        .await
        .expect("stored as v1");

    let restarted =
        crate::helpers::spawn_instance(&app.db_url, &app.b24, &app.mango, 20.0, None).await;
    let values = sealed_values(&restarted).await;
    assert!(
        values.iter().all(|(_, _, v)| v.starts_with("v2:")),
        "{values:?}"
    );
    assert!(!values.iter().any(|(_, _, v)| *v == app_v1 || *v == salt_v1));

    let deal = app.b24.add_deal(&p.member_id, None);
    let body = app.robot_body(&p, deal, &[("phone", "89001234567")], Default::default());
    let (status, answer) = restarted.post_form("/b24/robot", body).await;
    assert_eq!(status, 200, "{answer}");
    restarted.drain().await;
    assert_eq!(app.mango.callbacks().len(), 1, "signed with the salt");
}
on_both_backends!(values_sealed_before_binding_are_rebound_at_start_and_keep_working);

async fn rotation_refuses_a_value_moved_to_another_portal_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let alpha = app.installed_portal("moved-from").await;
    let beta = app.installed_portal("moved-to").await;
    let (from, to) = (alpha.member_id.clone(), beta.member_id.clone());
    app.shared
        .db
        .run(move |c| -> diesel::QueryResult<_> {
            use diesel::prelude::*;
            use mango_callback::db::schema::portal_settings;
            let salt: Option<String> = portal_settings::table
                .find(&from)
                .select(portal_settings::mango_api_salt)
                .first(c)?;
            diesel::update(portal_settings::table.find(&to))
                .set(portal_settings::mango_api_salt.eq(salt))
                .execute(c)
        })
        .await
        .expect("moved");
    let before = sealed_values(&app).await;
    let (old, new) = (
        app.shared.cipher.clone(),
        Cipher::new(&SecretKey::generate()),
    );
    let refused = app
        .shared
        .db
        .run(move |c| {
            Ok::<_, mango_callback::db::DbError>(mango_callback::portal::reseal::rotate(
                c, &old, &new,
            ))
        })
        .await
        .expect("db")
        .expect_err("refused")
        .to_string();
    assert!(
        refused
            .starts_with("1 stored value(s) do not open with the old key, so nothing was changed"),
        "{refused}"
    );
    assert!(
        refused.ends_with(&format!(
            "portal_settings.mango_api_salt of portal {}",
            beta.member_id
        )),
        "{refused}"
    );
    assert_eq!(sealed_values(&app).await, before, "nothing changed");
}
on_both_backends!(rotation_refuses_a_value_moved_to_another_portal_and_changes_nothing);
