//! Command-line flags, each also an environment variable.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;

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
    #[arg(long, env = "SSECHAT_DB", default_value = "./ssechat.db", value_parser = Database::parse)]
    pub db: Database,

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

    /// Streams one client address (IPv6: its /64) may open per second,
    /// sustained (429 above; 0 is off). Default: 4x --post-rate (40).
    /// Many people behind one NAT share an address: raise it for them.
    /// Behind a reverse proxy, set --trusted-proxies instead, so each
    /// client counts on its own.
    #[arg(long, env = "SSECHAT_STREAM_OPEN_RATE")]
    pub stream_open_rate: Option<f64>,

    /// Streams one client address may open in a burst before the rate
    /// applies. Default: 4x --post-burst (200).
    #[arg(long, env = "SSECHAT_STREAM_OPEN_BURST")]
    pub stream_open_burst: Option<u32>,

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

    /// HTTPS: certificate chain file (PEM, the server's certificate first).
    /// Needs --tls-key. SIGHUP reloads both files.
    #[arg(long, env = "SSECHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// HTTPS: private key file (PEM) of --tls-cert.
    #[arg(long, env = "SSECHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Over HTTPS, tell browsers to use only HTTPS for this host from now on
    /// (Strict-Transport-Security, one year).
    #[arg(long, env = "SSECHAT_HSTS")]
    pub hsts: bool,

    /// HTTPS with a certificate obtained and renewed by itself over ACME
    /// (TLS-ALPN-01 on --port, which must be reachable as port 443 of this
    /// name). Repeat for several names; with the env var, separate by commas.
    #[arg(long = "acme-domain", env = "SSECHAT_ACME_DOMAIN", value_delimiter = ',',
          conflicts_with_all = ["tls_cert", "tls_key"])]
    pub acme_domains: Vec<String>,

    /// ACME: contact e-mail for the account (expiry notices), optional.
    #[arg(long, env = "SSECHAT_ACME_EMAIL", requires = "acme_domains")]
    pub acme_email: Option<String>,

    /// ACME: directory URL of the certificate authority.
    #[arg(
        long,
        env = "SSECHAT_ACME_DIRECTORY",
        default_value = "https://acme-v02.api.letsencrypt.org/directory"
    )]
    pub acme_directory: String,

    /// ACME: directory keeping the account key and certificates across
    /// restarts (a restart serves the kept certificate at once).
    #[arg(long, env = "SSECHAT_ACME_CACHE", default_value = "./ssechat-acme")]
    pub acme_cache: PathBuf,

    /// ACME: an extra CA certificate (PEM) to trust for the ACME server
    /// itself, besides the system's roots (for a private ACME server).
    #[arg(long, env = "SSECHAT_ACME_ROOT", requires = "acme_domains")]
    pub acme_root: Option<PathBuf>,
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`, `::1`).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR like 10.0.0.0/8"))
}

/// Where history is kept (`--db`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `:memory:`: in memory only, lost on restart.
    Memory,
    /// An SQLite file.
    File(PathBuf),
}

impl Database {
    /// The in-memory marker, as on the command line.
    pub const MEMORY: &'static str = ":memory:";

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("the database path must not be empty (use :memory: for none)".into()),
            Self::MEMORY => Ok(Database::Memory),
            path => Ok(Database::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Memory => f.write_str(Self::MEMORY),
            Database::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How hard a SQLite commit waits for the disk (`--db-sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// `synchronous=FULL`: a 201 survives a power loss or OS crash.
    Full,
    /// `synchronous=NORMAL`: a 201 survives the process being killed, but
    /// the last commits may be lost if the machine itself goes down.
    /// Lower latency (no fsync per commit).
    Normal,
}

/// What to say when a flag or subcommand needs a part this build left out:
/// `what` needs it (e.g. "--redis needs cluster mode"), `feature` is the
/// cargo feature that brings it.
pub fn left_out(what: &str, feature: &str) -> String {
    format!(
        "{what}, which this build of ssechat left out (cargo feature `{feature}`, on by \
         default: rebuild without --no-default-features, or add --features {feature})"
    )
}

/// The command line with every environment variable unbound.
fn command_without_env() -> clap::Command {
    let mut cmd = <Config as clap::CommandFactory>::command();
    let ids: Vec<clap::Id> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
    for id in ids {
        cmd = cmd.mut_arg(id, |a| a.env(None::<&str>));
    }
    cmd
}

impl Config {
    /// Parses flags only: the environment is not read. For tests and tools
    /// that must not depend on what the caller has exported.
    pub fn from_flags<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = command_without_env().try_get_matches_from(args)?;
        <Config as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    /// Defaults, as if started with no flags and no environment.
    pub fn defaults() -> Self {
        Config::from_flags(["ssechat"]).expect("the defaults parse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_memory_or_a_file() {
        let c = Config::from_flags(["ssechat", "--db", ":memory:"]).unwrap();
        assert_eq!(c.db, Database::Memory);
        let c = Config::from_flags(["ssechat", "--db", "x/chat.db"]).unwrap();
        assert_eq!(c.db, Database::File(PathBuf::from("x/chat.db")));
        assert_eq!(c.db.to_string(), "x/chat.db");
        assert!(Config::from_flags(["ssechat", "--db", ""]).is_err());
    }

    #[test]
    fn from_flags_reads_no_environment_variable() {
        let with_env = <Config as clap::CommandFactory>::command();
        assert!(
            with_env.get_arguments().any(|a| a.get_env().is_some()),
            "the real command line reads the environment"
        );
        let unbound: Vec<_> = command_without_env()
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(
            unbound.is_empty(),
            "still bound to the environment: {unbound:?}"
        );
        let c = Config::defaults();
        assert_eq!(c.db, Database::File(PathBuf::from("./ssechat.db")));
        assert_eq!(c.redis, None);
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let c = Config::from_flags([
            "ssechat",
            "--trusted-proxies",
            "127.0.0.1, 10.1.2.3/8,fd00::/8",
        ])
        .unwrap();
        let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        assert!(Config::defaults().trusted_proxies.is_empty());
        assert!(Config::from_flags(["ssechat", "--trusted-proxies", "nginx"]).is_err());
    }
}
