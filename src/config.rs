//! Command-line flags, each also an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;

use crate::store::sqlite::Durability;

/// ssechat: a chat server. Receive over Server-Sent Events
/// (`GET /chat/events`), send with plain HTTP POST (`POST /chat/messages`).
///
/// Every limit set to 0 is off.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one; the log says which).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// SQLite database file for history, or `:memory:` to keep history in
    /// memory only (lost on restart).
    #[arg(long, env = "SSECHAT_DB", default_value = "./ssechat.db")]
    pub db: String,

    /// How a SQLite commit waits for the disk: `full` (fsync per commit: an
    /// acknowledged message survives a power loss) or `normal` (no fsync per
    /// commit: survives the process being killed, not the machine crashing;
    /// lower latency).
    #[arg(long, env = "SSECHAT_DB_SYNC", value_enum, default_value_t = Durability::Full)]
    pub db_sync: Durability,

    /// Messages kept per room (older ones are pruned).
    #[arg(long, env = "SSECHAT_HISTORY", default_value_t = 1000)]
    pub history: usize,

    /// Redis URL for cluster mode (e.g. redis://127.0.0.1:6379/): several
    /// ssechat processes then act as one chat; history lives in Redis and
    /// --db is unused.
    #[arg(long, env = "SSECHAT_REDIS")]
    pub redis: Option<String>,

    /// Cluster mode: seconds to wait for Redis at start-up before giving
    /// up (0: fail at once if it does not answer).
    #[arg(long, env = "SSECHAT_REDIS_WAIT", default_value_t = 0)]
    pub redis_wait: u64,

    /// Cluster mode: seconds after which a node that stopped sending
    /// heartbeats is taken for dead and its clients leave.
    #[arg(long, env = "SSECHAT_NODE_TTL", default_value_t = 15)]
    pub node_ttl: u64,

    /// Seconds between keep-alive comments on idle SSE streams.
    #[arg(long, env = "SSECHAT_KEEPALIVE", default_value_t = 15)]
    pub keepalive: u64,

    /// Largest POST body in bytes (413 above).
    #[arg(long, env = "SSECHAT_MAX_BODY_BYTES", default_value_t = 65536)]
    pub max_body_bytes: usize,

    /// Longest message in characters (Unicode scalar values; 400 above).
    #[arg(long, env = "SSECHAT_MAX_MESSAGE_CHARS", default_value_t = 2000)]
    pub max_message_chars: usize,

    /// Messages per second a client may post, sustained (429 above). Each
    /// IP address may post 4x this (anonymous posts count against it).
    #[arg(long, env = "SSECHAT_POST_RATE", default_value_t = 10.0)]
    pub post_rate: f64,

    /// Messages a client may post in a burst before the rate applies.
    #[arg(long, env = "SSECHAT_POST_BURST", default_value_t = 50)]
    pub post_burst: u32,

    /// Open SSE streams in total (503 above).
    #[arg(long, env = "SSECHAT_MAX_STREAMS", default_value_t = 20000)]
    pub max_streams: usize,

    /// Open SSE streams per client IP address (429 above).
    #[arg(long, env = "SSECHAT_MAX_STREAMS_PER_IP", default_value_t = 256)]
    pub max_streams_per_ip: usize,

    /// Long-polls waiting at once (503 above).
    #[arg(long, env = "SSECHAT_MAX_LONG_POLLS", default_value_t = 5000)]
    pub max_long_polls: usize,

    /// Long-polls waiting at once per client IP address (429 above), so one
    /// address cannot take every place.
    #[arg(long, env = "SSECHAT_MAX_LONG_POLLS_PER_IP", default_value_t = 256)]
    pub max_long_polls_per_ip: usize,

    /// Open connections per client IP address (IPv6: per /64). Beyond it a
    /// new connection is closed at once, so one address cannot use up the
    /// server's file descriptors. Trusted proxies (--trusted-proxies) are
    /// not capped.
    #[arg(long, env = "SSECHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 512)]
    pub max_connections_per_ip: usize,

    /// Events a stream may fall behind before it is disconnected (it then
    /// catches up by reconnecting with Last-Event-ID).
    #[arg(long, env = "SSECHAT_STREAM_BUFFER", default_value_t = 256)]
    pub stream_buffer: usize,

    /// Seconds a connection may refuse to take our writes (its reader has
    /// stopped reading) before it is dropped.
    #[arg(long, env = "SSECHAT_WRITE_TIMEOUT", default_value_t = 30)]
    pub write_timeout: u64,

    /// Seconds a graceful shutdown may take before remaining connections are cut.
    #[arg(long, env = "SSECHAT_SHUTDOWN_TIMEOUT", default_value_t = 5)]
    pub shutdown_timeout: u64,

    /// Milliseconds browsers wait before reconnecting (the SSE `retry:` hint).
    #[arg(long, env = "SSECHAT_RETRY_MS", default_value_t = 2000)]
    pub retry_ms: u64,

    /// Seconds a request body may take to arrive once its head has (408
    /// after). A client that sends a head and then stalls holds a
    /// connection; this bounds how long.
    #[arg(long, env = "SSECHAT_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,

    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` and
    /// `X-Forwarded-Proto` headers are believed, as CIDRs or addresses,
    /// comma-separated (e.g. `127.0.0.1,10.0.0.0/8,fd00::/8`). Default:
    /// none, so those headers are ignored and the peer is the client.
    #[arg(long, env = "SSECHAT_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`, `::1`).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR like 10.0.0.0/8"))
}

impl Config {
    /// Defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        Config::parse_from(["ssechat"])
    }

    /// The database path, or `None` for the in-memory store.
    pub fn db_path(&self) -> Option<PathBuf> {
        (self.db != ":memory:").then(|| PathBuf::from(&self.db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let c = Config::parse_from([
            "ssechat",
            "--trusted-proxies",
            "127.0.0.1, 10.1.2.3/8,fd00::/8",
        ]);
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        assert!(Config::defaults().trusted_proxies.is_empty());
        assert!(Config::try_parse_from(["ssechat", "--trusted-proxies", "nginx"]).is_err());
    }
}
