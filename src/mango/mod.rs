//! Mango Office VPBX client: request signing, the `callback_group` command and settings lookups.
//!
//! - [`sign`](mod@sign): the SHA-256 signature and the byte-exact form body (also verifies
//!   Mango's signed callbacks).
//! - [`client`]: the awc-based HTTP client.
//! - [`answer`]: the pure (status, body) → outcome classification, with [`MangoError`].
//! - [`events`]: Mango's call events read leniently, and the rule giving a call's outcome.
//! - [`codes`]: human descriptions of Mango's hierarchical result codes.
//! - [`rate`]: the per-account limit of callback commands, shared by all instances.
//!
//! Wire facts come from Mango's VPBX API documentation; the decisions here answer the defects of
//! the PHP script this app replaces (see README): numbers stay strings, the signed JSON is the sent JSON, every answer is read, and a
//! request that may have been accepted is never reported as retryable.

pub mod answer;
pub mod client;
pub mod codes;
pub mod events;
pub mod rate;
pub mod sign;

pub use answer::{interpret, Answer, MangoError};
pub use client::{Accepted, CallbackGroup, Group, Line, MangoClient};
pub use codes::describe_code;
pub use sign::{form_body, sign, verify, Credentials};

#[cfg(test)]
mod http_tests;
