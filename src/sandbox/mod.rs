//! Simulated peers.
pub mod bitrix;
pub mod mango;
