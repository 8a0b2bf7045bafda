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

use crate::chat::hub::Hub;
use crate::chat::Chat;
use crate::config::Config;
use crate::http::{routes, AppState};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::server::tls::{Tls, TlsError};
use crate::server::{Closing, Server};
use crate::store::memory::MemoryStore;
use crate::store::redis::{self, PresenceQueue, RedisStore};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

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
}

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    /// Ends background work (subscriber, heartbeat, keep-alive) and tells
    /// connections to finish.
    cancel: CancellationToken,
    state: AppState,
    tls: Option<Arc<Tls>>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        if !(config.post_rate >= 0.0 && config.post_rate.is_finite()) {
            return Err(StartupError::Config(
                "--post-rate must be a number >= 0".into(),
            ));
        }
        // Before anything is opened: a bad certificate stops the start here.
        let tls = Tls::from_config(&config)?.map(Arc::new);
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(config.stream_buffer, metrics);
        let cancel = CancellationToken::new();
        let chat = match &config.redis {
            Some(url) => {
                let (url, history, wait) = (url.clone(), config.history, config.redis_wait);
                let ttl = Duration::from_secs(config.node_ttl.max(1));
                let store = tokio::task::spawn_blocking(move || {
                    RedisStore::connect(&url, history, Duration::from_secs(wait), ttl)
                })
                .await
                .map_err(|e| StartupError::Store(e.to_string()))?
                .map_err(StartupError::Store)?;
                let store = Arc::new(store);
                hub.set_cluster(Arc::new(PresenceQueue::start(store.clone())));
                let (ready, subscribed) = tokio::sync::oneshot::channel();
                tokio::spawn(redis::run_subscriber(
                    store.clone(),
                    hub.clone(),
                    cancel.clone(),
                    ready,
                ));
                let wait = Duration::from_secs(config.redis_wait.max(5));
                if tokio::time::timeout(wait, subscribed).await.is_err() {
                    return Err(StartupError::Store(
                        "cannot subscribe to Redis events; is Redis reachable?".into(),
                    ));
                }
                tracing::info!(
                    node = store.node(),
                    "cluster mode: history and presence in Redis"
                );
                Chat::clustered(hub, store)
            }
            None => {
                let store: Arc<dyn Store> = match config.db_path() {
                    None => Arc::new(MemoryStore::new(config.history)),
                    Some(path) => Arc::new(
                        SqliteStore::open_with(&path, config.db_sync)
                            .map_err(|e| StartupError::Store(e.to_string()))?,
                    ),
                };
                Chat::new(hub, store)
            }
        };
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;
        let limits = Arc::new(Limits::new(
            config.post_rate,
            config.post_burst,
            config.max_streams,
            config.max_streams_per_ip,
            config.max_long_polls,
        ));
        Ok(Application {
            listener,
            addr,
            cancel,
            state: AppState {
                chat,
                config: Arc::new(config),
                limits,
            },
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

    /// Serves until `shutdown` completes, then shuts down gracefully: stop
    /// accepting, end every stream and long-poll, let in-flight requests
    /// finish (up to `--shutdown-timeout`), flush storage.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let Application {
            listener,
            addr,
            cancel,
            state,
            tls,
        } = self;
        let config = state.config.clone();
        let chat = state.chat.clone();
        let tracker = TaskTracker::new();
        let closing = Closing::new(cancel.clone());

        tracker.spawn(background(chat.clone(), config.clone(), cancel.clone()));

        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, db = %config.db, "listening on {scheme}://{addr}/");
        Server::new(
            warp::service(routes(state)),
            tls,
            Duration::from_secs(config.write_timeout),
            chat.hub.metrics().clone(),
        )
        .accept_until(&listener, &tracker, &closing, shutdown)
        .await;

        tracing::info!(
            open_streams = chat.hub.metrics().sse_streams.get(),
            "shutting down"
        );
        drop(listener);
        chat.hub.shutdown();
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
        if let Some(cluster) = chat.cluster().cloned() {
            let _ = tokio::task::spawn_blocking(move || cluster.reap_self()).await;
        }
        tracing::info!("shutdown complete");
    }
}

/// Periodic work: keep-alive ticks and history pruning.
async fn background(chat: Chat, config: Arc<Config>, cancel: CancellationToken) {
    let keepalive = Duration::from_secs(config.keepalive.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut prune = tokio::time::interval(Duration::from_secs(10));
    let mut heartbeat = tokio::time::interval(redis::heartbeat_every(Duration::from_secs(
        config.node_ttl.max(1),
    )));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = heartbeat.tick(), if chat.cluster().is_some() => {
                if let Some(cluster) = chat.cluster().cloned() {
                    match tokio::task::spawn_blocking(move || cluster.heartbeat()).await {
                        Ok(Err(e)) => tracing::warn!(error = %e, "cluster heartbeat failed"),
                        Err(e) => tracing::warn!(error = %e, "cluster heartbeat task failed"),
                        Ok(Ok(())) => {}
                    }
                }
            }
            _ = ticks.tick(), if config.keepalive > 0 => chat.hub.keepalive(),
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
