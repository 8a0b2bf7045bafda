//! The `ssechat` binary: parse flags, set up logging, serve until SIGINT or
//! SIGTERM.

#![forbid(unsafe_code)]

use clap::Parser;
use ssechat::config::Config;
use ssechat::startup::Application;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    ssechat::telemetry::init();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("ssechat: cannot start: {e}");
            std::process::exit(1);
        }
    };
    app.run_until(shutdown_signal()).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
