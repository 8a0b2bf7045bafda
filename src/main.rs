//! The `ssechat` binary: the server (`ssechat` or `ssechat serve`: parse
//! flags, set up logging, serve until SIGINT or SIGTERM) and its
//! command-line client (`ssechat send`, `ssechat listen`: see [`cli`]).

#![forbid(unsafe_code)]

#[cfg(feature = "cli")]
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ssechat::config::Config;
use ssechat::startup::Application;

/// jemalloc, not the system's malloc, because of what a crowd costs.
///
/// An idle SSE stream is mostly hyper's two 8 KiB buffers, of which a few
/// hundred bytes are ever written, and RSS counts written pages only.
/// glibc's malloc puts the buffers between the connection's small objects,
/// where what is written near them makes more of their pages resident, and
/// it keeps what a crowd leaves behind for good. Measured with 10,000 idle
/// streams in one room (`docs/BENCHMARK.md`, "Memory per idle connection,
/// and the allocator"): 11.7 KiB per stream with glibc, 7.35 with jemalloc;
/// after they left, 110 MB stayed resident with glibc, 14 MB with jemalloc
/// (its background thread returns what stays free for 10 s). One arena
/// (`.cargo/config.toml`): what a chat server allocates is small and short,
/// and each thread's cache absorbs it.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// ssechat: a chat server (receive over Server-Sent Events, send with plain
/// HTTP POST) and its command-line client.
///
/// Without a subcommand, or with `serve`, it runs the server with the
/// options below. Every limit set to 0 is off.
// The server's flags stay at the top level, so `ssechat --port 8080` works
// as it always has.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the same as no subcommand).
    Serve(Config),
    /// Send messages to a room (from the arguments or standard input).
    #[cfg(feature = "cli")]
    Send(cli::SendArgs),
    /// Print a room's messages as they arrive.
    #[cfg(feature = "cli")]
    Listen(cli::ListenArgs),
}

/// The client subcommands alone: parsed without the server's flags, whose
/// environment variables (`HOST`, `PORT`, ...) are none of a client's
/// business and must not make it fail.
#[derive(Parser)]
#[command(name = "ssechat", version)]
struct ClientCli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let first = std::env::args_os().nth(1);
    let client = matches!(
        first.as_ref().and_then(|a| a.to_str()),
        Some("send" | "listen")
    );
    if client && cfg!(not(feature = "cli")) {
        let why =
            ssechat::config::left_out("`send` and `listen` are the command-line client", "cli");
        eprintln!("ssechat: {why}");
        return ExitCode::from(2);
    }
    let command = if client {
        Some(ClientCli::parse().command)
    } else {
        let args = Cli::parse();
        args.command.or(Some(Command::Serve(args.serve)))
    };
    match command.expect("a command") {
        Command::Serve(config) => serve(config),
        #[cfg(feature = "cli")]
        Command::Send(a) => cli::send(a),
        #[cfg(feature = "cli")]
        Command::Listen(a) => cli::listen(a),
    }
}

fn serve(config: Config) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        ssechat::telemetry::init();
        let app = match Application::build(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                eprintln!("ssechat: cannot start: {e}");
                return ExitCode::from(1);
            }
        };
        app.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
