//! ssechat: a chat server. Clients receive over Server-Sent Events and send
//! with plain HTTP POST.
//!
//! Map of the crate:
//! - [`config`]: flags and environment variables (clap).
//! - [`startup`]: `Application`: binds, wires, serves, shuts down.
//! - [`server`]: the connection loop: HTTP/1.1 and HTTP/2, plain or TLS
//!   (certificate files or ACME), graceful close.
//! - [`chat`]: the domain, no HTTP: validated types, messages and their
//!   pre-encoded frames, the live [`chat::hub::Hub`] (rooms, presence, and
//!   each room's [`chat::fanout`] channel), the single writer, and the
//!   per-stream subscriber.
//! - [`store`]: history behind a narrow trait: memory, SQLite, and Redis
//!   (cluster mode: history, ids, presence and fan-out between nodes).
//! - [`http`]: the warp layer: pages, messages (POST, history, long-poll),
//!   events (SSE), identity, assets, ops, errors.
//! - [`sse`]: the SSE encoder and an EventSource-rules parser.
//! - [`limits`]: rate limits and connection caps.
//! - [`stall`]: drops connections whose peer stopped reading.
//! - [`metrics`]: Prometheus counters.
//! - [`telemetry`]: logging setup.

#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod stall;
pub mod startup;
pub mod store;
pub mod telemetry;
