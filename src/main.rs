//! Binary entry point: parse settings, start telemetry, run the chosen command.
fn main() {}
