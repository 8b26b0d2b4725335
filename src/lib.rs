//! mango-callback: a Bitrix24 application that turns a new deal into a phone call through Mango Office.
//!
//! A robot in the deal's automation calls us; we ring a Mango group of managers (trainees on the
//! deal's first run, experienced managers after) and, when one answers, Mango dials the client.
//!
//! # Layout
//! Each module imports only the ones listed after it. [`context`] holds the REST transport only;
//! `ctx.bitrix()`, defined in [`portal::api`], adds a portal's stored tokens to it.
//! - [`startup`]: building and running the application; the one list of job kinds
//!   ([`startup::job_registry`]) handed to the worker.
//! - [`http`]: the route table and thin request handlers — installer, events, robot, Mango's
//!   notifications, the settings page ([`http::settings_page`]), request reading and caller checks.
//! - [`callback`]: the product's rules — accept a run and finish it, each with its job in one
//!   transaction ([`callback::lifecycle`]); the jobs [`callback::place_call`] and [`callback::report`].
//! - [`portal`]: the tenant — one Bitrix24 portal, its tokens and settings ([`portal::store`]);
//!   calling it with its stored tokens ([`portal::api`]); our robot ([`portal::robot`]); upkeep
//!   jobs ([`portal::upkeep`]); re-sealing for `rotate-key` ([`portal::reseal`]).
//! - [`jobs`]: the durable job queue (outbox) and its worker; it knows no job kind.
//! - [`context`]: shared state and the per-thread HTTP clients handlers and jobs use.
//! - [`config`]: typed settings from environment variables.
//! - [`bitrix`]: Bitrix24 REST transport (limits, batch), OAuth, the deal's phone in CRM terms.
//! - [`mango`]: Mango Office VPBX client, request signing, result codes, the per-account rate.
//! - [`error`]: HTTP-facing errors.
//! - [`db`]: one diesel connection type over SQLite and PostgreSQL, pool, migrations.
//! - [`net`]: client addresses — trusted proxies and the per-address limit.
//! - [`phone`]: client phone numbers normalised for Mango.
//! - [`crypto`]: secrets sealed at rest (bound to their table, column and portal), the checked
//!   `APP_SECRET_KEY`, signed page tokens, constant-time comparison.
//! - [`json`]: integers our peers send as a JSON number or a string.
//! - [`clock`]: "now", movable by tests instead of sleeping.
//! - [`metrics`]: the operator's counters (`GET /metrics`) and the job worker's heartbeat
//!   (`GET /health`).
//! - [`telemetry`]: logging, and panics logged once and caught at handlers, jobs and database tasks.
//! - `sandbox` (cargo feature `sandbox`, on by default): simulated Bitrix24 and Mango servers for
//!   the tests, the demo and `mango-callback bench` (`sandbox::bench`); nothing else imports it.

pub mod bitrix;
pub mod callback;
pub mod clock;
pub mod config;
pub mod context;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod jobs;
pub mod json;
pub mod mango;
pub mod metrics;
pub mod net;
pub mod phone;
pub mod portal;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod startup;
pub mod telemetry;
