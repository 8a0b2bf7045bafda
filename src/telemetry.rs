//! Logging: `tracing` to stderr, one line per event; level from `RUST_LOG`
//! (default `info`). Client tokens never reach a log line: the type that
//! holds them redacts its `Debug` and has no `Display`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
