//! The command-line client: `ssechat send` and `ssechat listen`. It is a
//! client like any other: it talks to a server only over HTTP (a POST per
//! message, the SSE stream, history) and shares nothing with the server
//! code but the event-stream parser of `ssechat::sse`.
//!
//! - [`args`]: the flags and their `--help`.
//! - [`remote`]: the HTTP client (rustls, `--ca`, proxies from the
//!   environment), the identity, back-off, error replies.
//! - [`send`]: POST with retries that never double a message.
//! - [`listen`]: the reconnecting reader, `--exec`, `--count`.
//! - [`render`]: `NAME: TEXT` lines, JSON lines, presence notices.
//! - [`state`]: the crash-safe `--state` file.

mod args;
mod listen;
mod remote;
mod render;
mod send;
mod state;

use std::process::ExitCode;

pub use args::{ListenArgs, SendArgs};

pub fn send(args: SendArgs) -> ExitCode {
    runtime().block_on(send::run(args))
}

pub fn listen(args: ListenArgs) -> ExitCode {
    runtime().block_on(listen::run(args))
}

/// One thread is plenty for one connection at a time, and costs least.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
