//! `Application`: binds its own listener (so tests can use port 0 and learn
//! the real port), wires store + hub + routes, serves connections
//! ([`crate::server`]), and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::history::History;
use crate::chat::{Chat, StartError};
use crate::config::{Config, Database};
use crate::http::{routes, AppState};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::server::tls::{Tls, TlsError};
use crate::server::{Closing, Server};
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;

/// Why the server could not start. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Chat(#[from] StartError),
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    /// Ends background work (subscriber, heartbeat, keep-alive) and tells
    /// connections to finish.
    cancel: CancellationToken,
    /// Every task the application starts, from `build` on: shutdown waits
    /// for them all.
    tracker: TaskTracker,
    state: AppState,
    tls: Option<Arc<Tls>>,
}

impl Application {
    /// Starts the chat (history, writer, and in cluster mode the Redis
    /// subscriber and heartbeat) and binds the listener. If any step fails,
    /// what was started is stopped before the error is returned.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        if !(config.post_rate >= 0.0 && config.post_rate.is_finite()) {
            return Err(StartupError::Config(
                "--post-rate must be a number >= 0".into(),
            ));
        }
        // Before anything is opened: a bad certificate stops the start here.
        let tls = Tls::from_config(&config)?.map(Arc::new);
        let metrics = Arc::new(Metrics::default());
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let chat = match start_chat(&config, &metrics, &cancel, &tracker).await {
            Ok(chat) => chat,
            Err(e) => {
                stop_started(&cancel, &tracker).await;
                return Err(e);
            }
        };
        let addr = SocketAddr::new(config.host, config.port);
        let bound = async {
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            Ok::<_, std::io::Error>((listener, addr))
        };
        let (listener, addr) = match bound.await {
            Ok(bound) => bound,
            Err(source) => {
                stop_started(&cancel, &tracker).await;
                chat.close().await;
                return Err(StartupError::Bind { addr, source });
            }
        };
        let limits = Arc::new(
            Limits::new(
                config.post_rate,
                config.post_burst,
                config.max_streams,
                config.max_streams_per_ip,
                config.max_long_polls,
            )
            .with_per_ip(config.max_long_polls_per_ip, config.max_connections_per_ip)
            .with_stream_opens(config.stream_open_rate, config.stream_open_burst),
        );
        Ok(Application {
            listener,
            addr,
            cancel,
            tracker,
            state: AppState::new(chat, Arc::new(config), limits, metrics),
            tls,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The chat core, for tests that want to look inside.
    pub fn chat(&self) -> Chat {
        self.state.chat.clone()
    }

    /// The application's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stop
    /// accepting, end every stream and long-poll, let in-flight requests
    /// finish (up to `--shutdown-timeout`), flush storage.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let Application {
            listener,
            addr,
            cancel,
            tracker,
            state,
            tls,
        } = self;
        let config = state.config.clone();
        let chat = state.chat.clone();
        let metrics = state.metrics.clone();
        let closing = Closing::new(cancel.clone());

        tracker.spawn(background(chat.clone(), config.clone(), cancel.clone()));

        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, db = %config.db, "listening on {scheme}://{addr}/");
        let limits = state.limits.clone();
        let trusted: Arc<[ipnet::IpNet]> = config.trusted_proxies.clone().into();
        Server::new(
            warp::service(routes(state)),
            tls,
            Duration::from_secs(config.write_timeout),
            metrics.clone(),
        )
        .admit_with(limits, trusted)
        .accept_until(&listener, &tracker, &closing, shutdown)
        .await;

        tracing::info!(open_streams = metrics.sse_streams.get(), "shutting down");
        drop(listener);
        chat.shutdown();
        closing.close();
        tracker.close();
        let grace = Duration::from_secs(config.shutdown_timeout);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                connections = tracker.len(),
                "shutdown timeout reached; cutting remaining connections"
            );
        }
        chat.close().await;
        tracing::info!("shutdown complete");
    }
}

/// Ends what `build` started before it failed, so a failed start leaves
/// nothing running.
async fn stop_started(cancel: &CancellationToken, tracker: &TaskTracker) {
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Opens the history and starts the chat; in cluster mode also the Redis
/// subscriber and heartbeat (in `tracker`, ended by `cancel`), and waits
/// until the node hears the cluster.
async fn start_chat(
    config: &Config,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Chat, StartupError> {
    let Some(url) = &config.redis else {
        let history: Arc<dyn History> = match &config.db {
            Database::Memory => Arc::new(MemoryStore::new(config.history)),
            Database::File(path) => Arc::new(
                SqliteStore::open_with(path, config.db_sync)
                    .map_err(|e| StartupError::Store(e.to_string()))?,
            ),
        };
        return Ok(Chat::new(history, config.stream_buffer, metrics.clone())?);
    };
    start_cluster(url, config, metrics, cancel, tracker).await
}

/// Cluster mode: history and presence in Redis, the node's subscriber and
/// heartbeat started.
#[cfg(feature = "redis")]
async fn start_cluster(
    url: &str,
    config: &Config,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Chat, StartupError> {
    use crate::store::redis::{presence, subscriber, Redis, RedisCluster};
    let (url, history, wait) = (url.to_owned(), config.history, config.redis_wait);
    let ttl = Duration::from_secs(config.node_ttl.max(1));
    let redis = tokio::task::spawn_blocking(move || {
        Redis::connect(&url, history, Duration::from_secs(wait), ttl)
    })
    .await
    .map_err(|e| StartupError::Store(e.to_string()))?
    .map_err(StartupError::Store)?;
    let cluster = Arc::new(RedisCluster::start(redis.presence.clone()));
    let chat = Chat::clustered(
        redis.history.clone(),
        cluster,
        config.stream_buffer,
        metrics.clone(),
    )?;
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    tracker.spawn(subscriber::run(
        redis.conn.clone(),
        chat.inbox(),
        cancel.clone(),
        ready,
    ));
    tracker.spawn(presence::heartbeat(redis.presence.clone(), cancel.clone()));
    let wait = Duration::from_secs(config.redis_wait.max(5));
    if !matches!(tokio::time::timeout(wait, subscribed).await, Ok(Ok(()))) {
        chat.close().await;
        return Err(StartupError::Store(
            "cannot subscribe to Redis events; is Redis reachable?".into(),
        ));
    }
    tracing::info!(
        node = redis.presence.node(),
        "cluster mode: history and presence in Redis"
    );
    Ok(chat)
}

/// A build without the `redis` cargo feature has no cluster mode.
#[cfg(not(feature = "redis"))]
async fn start_cluster(
    _url: &str,
    _config: &Config,
    _metrics: &Arc<Metrics>,
    _cancel: &CancellationToken,
    _tracker: &TaskTracker,
) -> Result<Chat, StartupError> {
    Err(StartupError::Config(crate::config::left_out(
        "--redis needs cluster mode",
        "redis",
    )))
}

/// Periodic work: keep-alive ticks and history pruning.
async fn background(chat: Chat, config: Arc<Config>, cancel: CancellationToken) {
    let keepalive = Duration::from_secs(config.keepalive.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut prune = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick(), if config.keepalive > 0 => chat.keepalive(),
            _ = prune.tick(), if config.history > 0 => {
                match chat.prune(config.history).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "pruned history"),
                    Err(e) => tracing::warn!(error = %e, "pruning history failed"),
                }
            }
        }
    }
}
