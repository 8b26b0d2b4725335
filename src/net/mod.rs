//! Client addresses, below the HTTP layer so that configuration and shared state can hold them:
//! which proxies' forwarding headers are believed, and the per-address limit of unauthenticated
//! browser POSTs.

pub mod address_limit;
pub mod trusted_proxies;
