//! Black-box tests: the app on port 0 against a fresh database (SQLite and PostgreSQL) and the
//! simulated Bitrix24 and Mango servers, asserting on what those servers received.

mod helpers;

mod batching;
mod bench;
mod browser;
mod browser_driver;
mod browser_speed;
mod budget;
mod callback;
mod demo;
mod exposition;
mod group_commit;
mod hostile;
mod hours;
mod hours_settings;
mod install;
mod jobs;
mod lease;
mod limits;
mod lookup;
mod ops;
mod outcome;
mod outcome_edges;
mod peer_failures;
mod props;
mod refresh;
mod report_once;
mod resend;
mod retry;
mod secrets;
mod security;
mod self_check;
mod settings;
mod shutdown;
mod speed;
mod tokens;
