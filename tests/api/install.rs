//! App lifecycle: install, forged installs, update, uninstall; secrets sealed at rest.

use mango_callback::db::Backend;

use crate::helpers::{event_body_as_user, spawn_app};
use crate::on_both_backends;

async fn a_full_install_stores_the_portal_registers_the_robot_and_binds_events(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.b24.create_portal("alpha");
    let (status, page) = app.open_installer(&portal, 1).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("installFinish"),
        "the page finishes the install: {page}"
    );
    assert_eq!(
        app.b24.calls_to("oauth.app.info").len(),
        1,
        "AUTH_ID verified with app.info on the OAuth server"
    );
    let row = app
        .portal_row(&portal.member_id)
        .await
        .expect("portal stored");
    assert_eq!(row.domain, portal.domain);
    assert_eq!(row.client_endpoint, portal.client_endpoint);
    assert!(row.installed);
    let robots = app.b24.robots(&portal.member_id);
    assert_eq!(robots.len(), 1);
    let (code, fields) = &robots[0];
    assert_eq!(code, "mango_callback");
    assert_eq!(fields["HANDLER"], format!("{}/b24/robot", app.base));
    assert_eq!(fields["USE_SUBSCRIPTION"], "Y");
    for prop in ["phone", "group"] {
        assert!(
            fields["PROPERTIES"].get(prop).is_some(),
            "property {prop}: {fields}"
        );
    }
    for ret in ["result", "group_extension", "command_id", "error"] {
        assert!(
            fields["RETURN_PROPERTIES"].get(ret).is_some(),
            "return property {ret}"
        );
    }
    let mut events = app.b24.bound_events(&portal.member_id);
    events.sort();
    let handler = |path: &str| format!("{}{path}", app.base);
    assert_eq!(
        events,
        [
            ("ONAPPINSTALL".to_owned(), handler("/b24/install")),
            ("ONAPPTEST".to_owned(), handler("/b24/events")),
            ("ONAPPUNINSTALL".to_owned(), handler("/b24/events")),
            ("ONAPPUPDATE".to_owned(), handler("/b24/events")),
        ]
    );

    // The installer may be shown again: it updates, never duplicates.
    let (status, _) = app.open_installer(&portal, 1).await;
    assert_eq!(status, 200);
    assert_eq!(app.b24.robots(&portal.member_id).len(), 1);
    assert_eq!(app.b24.bound_events(&portal.member_id).len(), 4);
    assert_eq!(
        app.b24.calls_to("bizproc.robot.update").len(),
        1,
        "second install updates the robot"
    );
}
on_both_backends!(a_full_install_stores_the_portal_registers_the_robot_and_binds_events);

async fn a_forged_installer_post_is_refused_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.b24.create_portal("victim");
    let other = app.b24.create_portal("attacker");
    // An AUTH_ID the OAuth server does not know.
    let mut req = app
        .b24
        .iframe_request(&portal.member_id, 1, "DEFAULT", "ru");
    for (k, v) in req.form.iter_mut() {
        if k == "AUTH_ID" {
            *v = "forged-token".into();
        }
    }
    let (status, _) = app
        .post_form(
            &format!("/b24/install?{}", req.query_string()),
            req.to_form_body(),
        )
        .await;
    assert_eq!(status, 401);
    // A real token of another portal presented with the victim's member_id.
    let mut req = app.b24.iframe_request(&other.member_id, 1, "DEFAULT", "ru");
    for (k, v) in req.form.iter_mut() {
        if k == "member_id" {
            *v = portal.member_id.clone();
        }
    }
    let (status, _) = app
        .post_form(
            &format!("/b24/install?{}", req.query_string()),
            req.to_form_body(),
        )
        .await;
    assert_eq!(status, 403);
    // A non-admin user.
    app.b24.add_user(&portal.member_id, 7, false);
    let (status, _) = app.open_installer(&portal, 7).await;
    assert_eq!(status, 403);
    assert!(
        app.portal_row(&portal.member_id).await.is_none(),
        "nothing stored"
    );
    assert!(
        app.portal_row(&other.member_id).await.is_none(),
        "nothing stored"
    );
    assert!(app.b24.robots(&portal.member_id).is_empty());
}
on_both_backends!(a_forged_installer_post_is_refused_and_stores_nothing);

async fn stored_tokens_and_the_mango_salt_are_not_readable_in_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("sealed").await;
    let dump = app.dump_text().await;
    assert!(
        dump.contains("v2:"),
        "the dump sees the sealed columns: {dump}"
    );
    assert!(
        !dump.contains(crate::helpers::MANGO_SALT),
        "salt in plain text"
    );
    assert!(
        !dump.contains(&portal.application_token),
        "application token in plain text"
    );
    let req = app
        .b24
        .iframe_request(&portal.member_id, 1, "DEFAULT", "ru");
    let refresh = req.form_value("REFRESH_ID").expect("refresh").to_owned();
    app.post_form(
        &format!("/b24/install?{}", req.query_string()),
        req.to_form_body(),
    )
    .await;
    let dump = app.dump_text().await;
    assert!(!dump.contains(&refresh), "refresh token in plain text");
    if let Some(path) = app.db_url.strip_prefix("sqlite://") {
        let bytes = std::fs::read(path).expect("db file");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&refresh) && !text.contains(crate::helpers::MANGO_SALT),
            "secrets in the SQLite file"
        );
    }
}
on_both_backends!(stored_tokens_and_the_mango_salt_are_not_readable_in_the_database);

async fn update_rotates_the_application_token_and_re_adds_the_robot(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("upd").await;
    let old = app.b24.application_token(&portal.member_id);
    let statuses = app
        .b24
        .send_event(
            &portal.member_id,
            "ONAPPUPDATE",
            &[("VERSION", "2"), ("PREVIOUS_VERSION", "1")],
        )
        .await
        .expect("event");
    assert_eq!(statuses, [200]);
    assert!(
        app.b24.robots(&portal.member_id).is_empty(),
        "the update removed the robot"
    );
    app.drain().await;
    assert_eq!(app.b24.robots(&portal.member_id).len(), 1, "robot re-added");
    let new = app.b24.application_token(&portal.member_id);
    assert_ne!(old, new);
    // The new token is accepted on robot calls; (the old one is no longer).
    let deal = app.b24.add_deal(&portal.member_id, None);
    let fired = app
        .b24
        .fire_robot(&portal.member_id, "mango_callback", deal, &[])
        .await
        .expect("robot");
    assert_eq!(fired.status, 200, "{}", fired.body);
}
on_both_backends!(update_rotates_the_application_token_and_re_adds_the_robot);

async fn uninstall_with_clean_removes_every_row_of_that_portal_and_no_other(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.installed_portal("gone").await;
    let b = app.installed_portal("stays").await;
    for p in [&a, &b] {
        let deal = app.b24.add_deal(&p.member_id, None);
        app.b24
            .fire_robot(
                &p.member_id,
                "mango_callback",
                deal,
                &[("phone", "89001234567")],
            )
            .await
            .expect("robot");
    }
    app.drain().await;
    // A forged uninstall (wrong token) changes nothing.
    let body = format!(
        "event=ONAPPUNINSTALL&data[CLEAN]=1&auth[member_id]={}&auth[application_token]=wrong",
        a.member_id
    );
    let (status, _) = app.post_form("/b24/events", body).await;
    assert_eq!(status, 401);
    assert!(app.portal_row(&a.member_id).await.is_some());
    let statuses = app
        .b24
        .send_event(&a.member_id, "ONAPPUNINSTALL", &[("CLEAN", "1")])
        .await
        .expect("event");
    assert_eq!(statuses, [200]);
    assert!(app.portal_row(&a.member_id).await.is_none());
    assert!(app.portal_row(&b.member_id).await.is_some());
    let (am, bm) = (a.member_id.clone(), b.member_id.clone());
    let (a_rows, b_rows) = app
        .shared
        .db
        .run(move |c| -> diesel::QueryResult<_> {
            Ok((
                mango_callback::callback::store::latest(c, &am, 50)?.len(),
                mango_callback::callback::store::latest(c, &bm, 50)?.len(),
            ))
        })
        .await
        .expect("db");
    assert_eq!((a_rows, b_rows), (0, 1));
    let jobs = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("db");
    assert!(jobs
        .iter()
        .all(|j| j.member_id.as_deref() != Some(a.member_id.as_str())));
    // The shared REST budget row goes too (a re-installation starts with a full bucket).
    let budgets: Vec<String> = app
        .shared
        .db
        .run(|c| {
            use diesel::prelude::*;
            use mango_callback::db::schema::rest_budgets;
            rest_budgets::table
                .select(rest_budgets::member_id)
                .load::<String>(c)
        })
        .await
        .expect("db");
    assert!(!budgets.contains(&a.member_id), "{budgets:?}");
    assert!(budgets.contains(&b.member_id), "{budgets:?}");
}
on_both_backends!(uninstall_with_clean_removes_every_row_of_that_portal_and_no_other);

async fn onappinstall_is_verified_with_the_oauth_server_before_its_token_is_stored(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.b24.create_portal("event-install");
    let body = app.b24.onappinstall_body(&portal.member_id);
    // A forged copy: the access token is not one the OAuth server issued.
    let forged = body
        .split('&')
        .map(|kv| {
            if kv.starts_with("auth%5Baccess_token%5D=") || kv.starts_with("auth[access_token]=") {
                "auth[access_token]=forged".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(app.post_form("/b24/install", forged).await.0, 401);
    assert!(
        app.portal_row(&portal.member_id).await.is_none(),
        "nothing stored"
    );
    let (status, answer) = app.post_form("/b24/install", body).await;
    assert_eq!(status, 200, "{answer}");
    let row = app.portal_row(&portal.member_id).await.expect("stored");
    let stored = app
        .shared
        .cipher
        .open(
            mango_callback::crypto::Slot::application_token(&portal.member_id),
            row.application_token.as_deref().expect("token"),
        )
        .expect("opens");
    assert_eq!(stored, portal.application_token);
    app.drain().await;
    assert_eq!(
        app.b24.robots(&portal.member_id).len(),
        1,
        "robot registered by the queued job"
    );
}
on_both_backends!(onappinstall_is_verified_with_the_oauth_server_before_its_token_is_stored);

/// A manager (not an administrator) who opens the app holds a real token; the attack measured in
/// #8 posts ONAPPINSTALL with it and an application token of the attacker's choosing.
async fn a_managers_onappinstall_is_refused_and_the_genuine_robot_still_completes(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("managed").await;
    app.b24.add_user(&portal.member_id, 7, false);
    let body = event_body_as_user(
        &app.b24,
        &portal,
        "ONAPPINSTALL",
        7,
        "attacker-chosen-token",
    );
    let (status, answer) = app.post_form("/b24/install", body).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone()),
        "the stored application token is unchanged"
    );
    app.robot_call_completes(&portal, "89001234567").await;
    // The attacker's token opens nothing.
    let deal = app.b24.add_deal(&portal.member_id, None);
    let forged = app
        .robot_body(
            &portal,
            deal,
            &[("phone", "89990000000")],
            Default::default(),
        )
        .replace(&portal.application_token, "attacker-chosen-token");
    assert_eq!(app.post_form("/b24/robot", forged).await.0, 401);
}
on_both_backends!(a_managers_onappinstall_is_refused_and_the_genuine_robot_still_completes);

async fn a_managers_onappupdate_is_refused_and_the_genuine_robot_still_completes(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("managed-upd").await;
    app.b24.add_user(&portal.member_id, 7, false);
    let body = event_body_as_user(&app.b24, &portal, "ONAPPUPDATE", 7, "attacker-chosen-token");
    let (status, answer) = app.post_form("/b24/events", body).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone()),
        "the stored application token is unchanged"
    );
    app.drain().await;
    assert_eq!(
        app.b24.calls_to("bizproc.robot.update").len(),
        0,
        "no robot re-registration was queued"
    );
    app.robot_call_completes(&portal, "89001234567").await;
}
on_both_backends!(a_managers_onappupdate_is_refused_and_the_genuine_robot_still_completes);
