//! Simulated Bitrix24 portal and OAuth server.

/// client_id the simulated OAuth server accepts.
pub const SANDBOX_CLIENT_ID: &str = "app.sandbox0000000001.00000001";
/// client_secret the simulated OAuth server accepts.
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-client-secret-0123456789abcdef";
