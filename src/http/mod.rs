//! The HTTP layer: the whole route table (here) and thin handlers; what a request brings is read
//! in [`request`], who sent it in [`client_addr`] and [`auth`].

pub mod auth;
pub mod client_addr;
pub mod events;
pub mod install;
pub mod mango;
pub mod ops;
pub mod page;
pub mod request;
pub mod robot;
pub mod settings_page;

#[cfg(test)]
mod props;

use actix_web::{web, HttpResponse};

/// The request logger: `tracing-actix-web`'s, with the client address of [`client_addr::client_ip_of`].
pub type RequestLogger = tracing_actix_web::TracingLogger<client_addr::RootSpan>;

/// Largest form body we read; Bitrix24's requests are a few kilobytes.
pub const MAX_FORM: usize = 256 * 1024;

/// Every route, used by the server and by handler tests alike.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(guarded("/health", web::get().to(ops::health)))
        .service(guarded("/metrics", web::get().to(ops::metrics)))
        .service(guarded(
            "/b24/install",
            web::post().to(install::install_app),
        ))
        .service(guarded("/b24/events", web::post().to(events::handle_event)))
        .service(guarded(
            "/b24/robot",
            web::post().to(robot::handle_robot_call),
        ))
        .service(guarded("/b24/app", web::post().to(settings_page::show_app)))
        .service(guarded(
            "/b24/app/settings",
            web::post().to(settings_page::save_settings),
        ))
        .service(guarded(
            "/b24/app/mango/check",
            web::post().to(settings_page::check_mango),
        ))
        .service(guarded(
            "/b24/app/mango/options",
            web::post().to(settings_page::mango_options),
        ))
        .service(guarded("/mango/{tail:.*}", web::post().to(mango::receive)))
        .service(actix_files::Files::new(
            "/static",
            concat!(env!("CARGO_MANIFEST_DIR"), "/static"),
        ));
}

/// One route behind [`guard_route`]. The guard sits on the resource, after routing, because
/// it keeps a handle on the request and the router needs the request to itself while it matches.
fn guarded(path: &str, route: actix_web::Route) -> impl actix_web::dev::HttpServiceFactory {
    web::resource(path)
        .wrap(actix_web::middleware::from_fn(guard_route))
        .route(route)
}

/// Wraps every route. A panic in a handler (a bug) is answered 500 like any internal error
/// instead of dropping the connection, and the server goes on; the panic hook logs it once and
/// whatever the handler had open in the database is rolled back by the pool.
///
/// And every refused request is logged here, once, with the client's address, the path, the
/// status and the reason its response carries ([`crate::error::Refusal`]): handlers do not log
/// their refusals themselves, and `AppError::error_response` cannot, as it never sees the request.
pub async fn guard_route(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let http_req = req.request().clone();
    match crate::telemetry::catch_panic(next.call(req)).await {
        Ok(Ok(res)) => {
            if let Some(refusal) = res.response().extensions().get::<crate::error::Refusal>() {
                tracing::warn!(
                    peer = %client_addr::peer(&http_req),
                    path = %http_req.path(),
                    status = res.status().as_u16(),
                    reason = %refusal.0,
                    "request refused"
                );
            } else if let Some(e) = res
                .response()
                .error()
                .filter(|_| res.status().is_client_error())
            {
                // Refused before the handler ran: an extractor's error (a body over the limit).
                tracing::warn!(
                    peer = %client_addr::peer(&http_req),
                    path = %http_req.path(),
                    status = res.status().as_u16(),
                    reason = %e,
                    "request refused"
                );
            }
            Ok(res.map_into_boxed_body())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(actix_web::dev::ServiceResponse::new(
            http_req,
            HttpResponse::InternalServerError()
                .json(serde_json::json!({ "error": crate::error::INTERNAL_MESSAGE })),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as atest;

    async fn panics() -> HttpResponse {
        panic!("a bug in a handler")
    }

    async fn health() -> HttpResponse {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
    }

    #[actix_web::test]
    async fn a_panicking_handler_is_answered_500_and_the_app_keeps_serving() {
        let app = atest::init_service(
            actix_web::App::new()
                .service(guarded("/boom", web::get().to(panics)))
                .service(guarded("/health", web::get().to(health))),
        )
        .await;
        let res =
            atest::call_service(&app, atest::TestRequest::get().uri("/boom").to_request()).await;
        assert_eq!(res.status().as_u16(), 500);
        let body = atest::read_body(res).await;
        assert!(
            String::from_utf8_lossy(&body).contains("internal error"),
            "a generic message, no panic text"
        );
        let res =
            atest::call_service(&app, atest::TestRequest::get().uri("/health").to_request()).await;
        assert_eq!(res.status().as_u16(), 200);
    }
}
