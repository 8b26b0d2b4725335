//! mango-callback: a Bitrix24 application that turns a new deal into a phone call through Mango Office.
//!
//! A robot in the deal's automation calls us; we ring a Mango group of managers (trainees on the
//! deal's first run, experienced managers after) and, when one answers, Mango dials the client.
//!
//! # Layout
//! - [`config`]: typed settings from environment variables.
//! - [`context`]: shared state and the per-thread HTTP clients handlers and jobs use.
//! - [`clock`]: "now", movable by tests instead of sleeping.
//! - [`crypto`]: secrets sealed at rest (bound to their table, column and portal), the checked
//!   `APP_SECRET_KEY`, signed page tokens, constant-time comparison.
//! - [`error`]: HTTP-facing errors.
//! - [`db`]: one diesel connection type over SQLite and PostgreSQL, pool, migrations.
//! - [`jobs`]: the durable job queue (outbox) and its worker.
//! - [`portal`]: the tenant — one Bitrix24 portal, its tokens and settings; re-sealing them
//!   (`rotate-key`).
//! - [`bitrix`]: outbound Bitrix24 REST and OAuth client.
//! - [`mango`]: outbound Mango Office VPBX client and request signing.
//! - [`phone`]: client phone numbers normalised for Mango.
//! - [`callback`]: the product's rules — duplicate cut-off, group choice, the call and its report.
//! - [`http`]: the route table and thin request handlers.
//! - [`sandbox`]: simulated Bitrix24 and Mango servers used by tests, the benchmark and the demo.
//! - [`startup`]: building and running the application.
//! - [`telemetry`]: logging, and panics logged once and caught at handlers, jobs and database tasks.

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
pub mod mango;
pub mod net;
pub mod phone;
pub mod portal;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod startup;
pub mod telemetry;
