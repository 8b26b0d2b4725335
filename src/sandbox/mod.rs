//! Simulated peers (Bitrix24, Mango) and the sandbox demo built on them.
pub mod bitrix;
pub mod demo;
pub mod mango;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};

/// Serves a simulator's routes from `listener` on one worker of the current actix system (so it
/// runs beside the app in tests and in the sandbox) and returns the handle that stops it.
pub(crate) fn serve<F>(listener: std::net::TcpListener, routes: F) -> std::io::Result<ServerHandle>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let server = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .listen(listener)?
        .disable_signals()
        .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok(handle)
}
