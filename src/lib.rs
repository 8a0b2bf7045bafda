//! ssechat: a chat server. Clients receive over Server-Sent Events and send
//! with plain HTTP POST.
//!
//! Map of the crate:
//! - [`config`]: flags and environment variables (clap).
//! - [`startup`]: `Application`: binds, wires, serves, shuts down.
//! - [`server`]: the connection loop: HTTP/1.1 and HTTP/2, plain or TLS
//!   (certificate files or ACME), graceful close.
//! - [`chat`]: the domain, no HTTP and no storage: validated types,
//!   messages and their pre-encoded frames, the live hub (rooms, presence,
//!   fan-out; private), the single writer (private), and the two ports the
//!   domain owns: [`chat::history::History`] and [`chat::cluster::Cluster`]
//!   (with [`chat::cluster::Inbox`], where a cluster delivers). [`chat::Chat`]
//!   is what the rest sees: open a stream, wait for newer messages, append.
//! - [`store`]: adapters for the ports: memory, SQLite, and Redis (cluster
//!   mode: history, presence and the subscriber loop, one module each).
//!   Depends on `chat`; nothing in `chat` or `http` names it.
//! - [`http`]: the warp layer: pages, messages (POST, history, long-poll),
//!   events (SSE), identity, assets, ops, errors.
//! - [`sse`]: the SSE encoder and an EventSource-rules parser.
//! - [`limits`]: rate limits and connection caps.
//! - [`stall`]: drops connections whose peer stopped reading.
//! - [`metrics`]: Prometheus counters, held by the application state.
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
