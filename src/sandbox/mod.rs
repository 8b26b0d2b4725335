//! Simulated peers (Bitrix24, Mango) and the sandbox demo built on them.
pub mod bitrix;
pub mod demo;
pub mod mango;
