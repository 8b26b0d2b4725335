//! The application token's arrival and the ONAPPTEST self-check: portals whose installer POST
//! lacks `APPLICATION_TOKEN`, "Bitrix24 reaches the app" on the settings page, and ONAPPUPDATEs
//! kept while the OAuth server cannot verify them.

use std::time::Duration;

use mango_callback::db::Backend;
use mango_callback::sandbox::bitrix::{Delivery, SimPortal};

use crate::helpers::{event_body_as_user, spawn_app, TestApp};
use crate::on_both_backends;

/// Installs the app from a portal whose installer POST carries no `APPLICATION_TOKEN`.
async fn installed_without_application_token(app: &TestApp, name: &str) -> SimPortal {
    let portal = app.b24.create_portal(name);
    app.b24
        .set_iframe_application_token(&portal.member_id, false);
    let (status, page) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 200, "installer failed: {page}");
    app.configure_mango(&portal.member_id).await;
    portal
}

/// The installer page's `BX24.installFinish()`: Bitrix24 sends ONAPPINSTALL to the handler the
/// installer bound, and from then on delivers events.
async fn installer_finishes(app: &TestApp, portal: &SimPortal) {
    assert_eq!(app.b24.finish_install(&portal.member_id), 1);
    app.b24.settle().await;
    let deliveries = app.b24.deliveries(&portal.member_id);
    assert_eq!(
        deliveries.last().map(|d| d.status),
        Some(Some(200)),
        "{deliveries:?}"
    );
}

/// The ONAPPTEST deliveries Bitrix24 made to the app.
fn onapptests(app: &TestApp, portal: &SimPortal) -> Vec<Delivery> {
    app.b24
        .deliveries(&portal.member_id)
        .into_iter()
        .filter(|d| d.event == "ONAPPTEST")
        .collect()
}

async fn a_portal_installed_without_application_token_gets_it_from_onappinstall_after_install_finish(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = installed_without_application_token(&app, "no-token").await;
    assert_eq!(app.stored_application_token(&portal.member_id).await, None);
    let (status, page) = app.open_app_page(&portal, 1, "en").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Application token: missing"), "{page}");
    let (_, page) = app.open_app_page(&portal, 1, "ru").await;
    assert!(page.contains("Токен приложения: отсутствует"), "{page}");
    let deal = app.b24.add_deal(&portal.member_id, None);
    let refused = app
        .b24
        .fire_robot(
            &portal.member_id,
            "mango_callback",
            deal,
            &[("phone", "89001234567")],
        )
        .await
        .expect("robot registered");
    assert_eq!(
        refused.status, 401,
        "no token stored, nothing can verify the call"
    );

    // BX24.installFinish() in the installer page: Bitrix24 delivers ONAPPINSTALL to the handler
    // the installer bound, with the installing admin's auth and the application token.
    assert_eq!(app.b24.finish_install(&portal.member_id), 1);
    app.b24.settle().await;
    let deliveries = app.b24.deliveries(&portal.member_id);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].event, "ONAPPINSTALL");
    assert_eq!(deliveries[0].handler, format!("{}/b24/install", app.base));
    assert_eq!(deliveries[0].status, Some(200), "{deliveries:?}");
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone())
    );
    app.robot_call_completes(&portal, "89001234567").await;
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(page.contains("Application token: received"), "{page}");
}
on_both_backends!(
    a_portal_installed_without_application_token_gets_it_from_onappinstall_after_install_finish
);

async fn the_self_check_after_install_shows_that_bitrix24_reaches_the_app(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("reach").await;
    installer_finishes(&app, &portal).await;
    // A manager's view of the health line (an admin's visit would start a check of its own).
    app.b24.add_user(&portal.member_id, 7, false);
    let (_, page) = app.open_app_page(&portal, 7, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: not checked yet"),
        "{page}"
    );
    // A forged ONAPPTEST (wrong application token) proves nothing and is refused.
    let forged = event_body_as_user(&app.b24, &portal, "ONAPPTEST", 7, "forged-token");
    assert_eq!(app.post_form("/b24/events", forged).await.0, 401);

    // The install-time check waits two minutes, long enough for the installer page to have
    // called installFinish() (no event is delivered before), then asks for ONAPPTEST.
    app.drain().await;
    assert!(app.b24.calls_to("event.test").is_empty(), "not at once");
    app.advance(Duration::from_secs(3 * 60));
    app.drain().await;
    assert_eq!(app.b24.calls_to("event.test").len(), 1);
    app.b24.settle().await;
    let deliveries = onapptests(&app, &portal);
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].handler, format!("{}/b24/events", app.base));
    assert_eq!(deliveries[0].status, Some(200), "{deliveries:?}");
    let (_, page) = app.open_app_page(&portal, 7, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: yes (checked at"),
        "{page}"
    );
    assert!(page.contains("Application token: received"), "{page}");
    let (_, page) = app.open_app_page(&portal, 7, "ru").await;
    assert!(
        page.contains("Битрикс24 видит приложение: да (проверено"),
        "{page}"
    );
}
on_both_backends!(the_self_check_after_install_shows_that_bitrix24_reaches_the_app);

async fn an_unreachable_app_shows_no_and_an_admin_visit_an_hour_later_checks_again(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("unreachable").await;
    installer_finishes(&app, &portal).await;
    app.b24.set_app_unreachable(true);
    app.advance(Duration::from_secs(3 * 60));
    app.drain().await;
    app.b24.settle().await;
    let deliveries = onapptests(&app, &portal);
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, None, "{deliveries:?}");
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: checking"),
        "{page}"
    );
    app.advance(Duration::from_secs(6 * 60));
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: no (checked at"),
        "{page}"
    );
    let (_, page) = app.open_app_page(&portal, 1, "ru").await;
    assert!(
        page.contains("Битрикс24 видит приложение: нет (проверено"),
        "{page}"
    );
    // Opening the page within the hour does not start another check.
    app.drain().await;
    assert_eq!(app.b24.calls_to("event.test").len(), 1);

    // Fixed; an administrator opens the page more than an hour later: checked again.
    app.b24.set_app_unreachable(false);
    app.advance(Duration::from_secs(61 * 60));
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(page.contains("Bitrix24 reaches the app: no"), "{page}");
    let (_, _) = app.open_app_page(&portal, 1, "en").await;
    app.drain().await;
    assert_eq!(
        app.b24.calls_to("event.test").len(),
        2,
        "one check per hour, however many visits"
    );
    app.b24.settle().await;
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: yes (checked at"),
        "{page}"
    );
}
on_both_backends!(an_unreachable_app_shows_no_and_an_admin_visit_an_hour_later_checks_again);

async fn onapptest_stores_the_application_token_of_a_portal_that_has_none(backend: Backend) {
    let app = spawn_app(backend).await;
    // A portal where the app was installed (installFinish() ran) before it bound ONAPPINSTALL,
    // and whose installer POST, opened again, lacks APPLICATION_TOKEN: no ONAPPINSTALL comes.
    let portal = app.b24.create_portal("test-token");
    app.b24
        .set_iframe_application_token(&portal.member_id, false);
    assert_eq!(app.b24.finish_install(&portal.member_id), 0);
    let (status, page) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 200, "installer failed: {page}");
    app.configure_mango(&portal.member_id).await;
    assert_eq!(app.stored_application_token(&portal.member_id).await, None);
    app.advance(Duration::from_secs(3 * 60));
    app.drain().await;
    app.b24.settle().await;
    let deliveries = app.b24.deliveries(&portal.member_id);
    assert_eq!(deliveries.len(), 1);
    assert_eq!(
        (deliveries[0].event.as_str(), deliveries[0].status),
        ("ONAPPTEST", Some(200))
    );
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone()),
        "verified through app.info and user.admin, then stored"
    );
    app.robot_call_completes(&portal, "89001234567").await;
}
on_both_backends!(onapptest_stores_the_application_token_of_a_portal_that_has_none);

async fn a_non_admins_onapptest_does_not_store_an_application_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let portal = installed_without_application_token(&app, "test-manager").await;
    app.b24.add_user(&portal.member_id, 7, false);
    let body = event_body_as_user(&app.b24, &portal, "ONAPPTEST", 7, "attacker-chosen-token");
    assert_eq!(app.post_form("/b24/events", body).await.0, 403);
    assert_eq!(app.stored_application_token(&portal.member_id).await, None);
    let (_, page) = app.open_app_page(&portal, 7, "en").await;
    assert!(
        page.contains("Bitrix24 reaches the app: not checked yet"),
        "{page}"
    );
}
on_both_backends!(a_non_admins_onapptest_does_not_store_an_application_token);

async fn an_onappupdate_arriving_while_the_oauth_server_is_down_is_kept_and_applied_later(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("oauth-down").await;
    app.b24.set_oauth_unavailable(true);
    let statuses = app
        .b24
        .send_event(
            &portal.member_id,
            "ONAPPUPDATE",
            &[("VERSION", "2"), ("PREVIOUS_VERSION", "1")],
        )
        .await
        .expect("delivered");
    assert_eq!(statuses, [202], "kept, not lost");
    let rotated = app.b24.application_token(&portal.member_id);
    let dump = app.dump_text().await;
    assert!(
        !dump.contains(&rotated),
        "the kept update's tokens are sealed"
    );
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone()),
        "nothing applied before verification"
    );
    app.drain().await;
    assert!(
        app.b24.robots(&portal.member_id).is_empty(),
        "still unverified"
    );

    app.b24.set_oauth_unavailable(false);
    app.advance(Duration::from_secs(10 * 60));
    app.drain().await;
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(rotated)
    );
    assert_eq!(
        app.b24.robots(&portal.member_id).len(),
        1,
        "robot re-registered"
    );
    app.robot_call_completes(&portal, "89001234567").await;
}
on_both_backends!(an_onappupdate_arriving_while_the_oauth_server_is_down_is_kept_and_applied_later);

async fn a_forged_onappupdate_kept_while_the_oauth_server_is_down_is_never_applied(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("forged-upd").await;
    app.b24.set_oauth_unavailable(true);
    let body = event_body_as_user(&app.b24, &portal, "ONAPPUPDATE", 1, "attacker-chosen-token")
        .split('&')
        .map(|kv| {
            if kv.starts_with("auth[access_token]=") {
                "auth[access_token]=forged".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let (status, answer) = app.post_form("/b24/events", body).await;
    assert_eq!(status, 202, "{answer}");
    // Robot calls keep working meanwhile.
    app.robot_call_completes(&portal, "89001234567").await;

    app.b24.set_oauth_unavailable(false);
    app.advance(Duration::from_secs(10 * 60));
    app.drain().await;
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(portal.application_token.clone()),
        "the forged update was dropped"
    );
    let jobs = app
        .shared
        .db
        .run(mango_callback::jobs::queue::all)
        .await
        .expect("db");
    assert!(
        jobs.iter()
            .filter(|j| j.kind == "apply_app_update")
            .all(|j| j.status == mango_callback::jobs::queue::DONE),
        "nothing left to retry: {jobs:?}"
    );
    app.robot_call_completes(&portal, "89001234568").await;
}
on_both_backends!(a_forged_onappupdate_kept_while_the_oauth_server_is_down_is_never_applied);

async fn a_kept_onappupdate_verified_after_a_newer_update_does_not_overwrite_its_token(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("two-updates").await;
    app.b24.set_oauth_unavailable(true);
    let update = [("VERSION", "2"), ("PREVIOUS_VERSION", "1")];
    let statuses = app
        .b24
        .send_event(&portal.member_id, "ONAPPUPDATE", &update)
        .await
        .expect("delivered");
    assert_eq!(statuses, [202]);
    app.b24.set_oauth_unavailable(false);
    let update = [("VERSION", "3"), ("PREVIOUS_VERSION", "2")];
    let statuses = app
        .b24
        .send_event(&portal.member_id, "ONAPPUPDATE", &update)
        .await
        .expect("delivered");
    assert_eq!(statuses, [200]);
    let newest = app.b24.application_token(&portal.member_id);
    app.advance(Duration::from_secs(10 * 60));
    app.drain().await;
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(newest),
        "the older update, verified last, was not applied over the newer one"
    );
    app.robot_call_completes(&portal, "89001234567").await;
}
on_both_backends!(a_kept_onappupdate_verified_after_a_newer_update_does_not_overwrite_its_token);

async fn a_reinstalled_portal_does_not_keep_the_application_token_of_its_old_install(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let portal = app.installed_portal("reinstall").await;
    let statuses = app
        .b24
        .send_event(&portal.member_id, "ONAPPUNINSTALL", &[("CLEAN", "0")])
        .await
        .expect("delivered");
    assert_eq!(statuses, [200]);
    assert_eq!(app.stored_application_token(&portal.member_id).await, None);
    // Installed again from an installer POST without APPLICATION_TOKEN: "missing" until the
    // installing admin's ONAPPINSTALL brings the new one.
    app.b24
        .set_iframe_application_token(&portal.member_id, false);
    let (status, page) = app.open_installer(&portal, portal.admin_user_id).await;
    assert_eq!(status, 200, "{page}");
    let (_, page) = app.open_app_page(&portal, 1, "en").await;
    assert!(page.contains("Application token: missing"), "{page}");
    installer_finishes(&app, &portal).await;
    assert_eq!(
        app.stored_application_token(&portal.member_id).await,
        Some(app.b24.application_token(&portal.member_id))
    );
    app.robot_call_completes(&portal, "89001234567").await;
}
on_both_backends!(a_reinstalled_portal_does_not_keep_the_application_token_of_its_old_install);
