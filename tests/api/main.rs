//! Black-box tests: the app on port 0 against a fresh database (SQLite and PostgreSQL) and the
//! simulated Bitrix24 and Mango servers, asserting on what those servers received.

mod helpers;

mod bench;
mod browser;
mod budget;
mod callback;
mod hostile;
mod install;
mod jobs;
mod lease;
mod limits;
mod peer_failures;
mod props;
mod refresh;
mod resend;
mod secrets;
mod security;
mod self_check;
mod settings;
mod shutdown;
mod tokens;
