//! `Application`: binds its own listener (so tests can use port 0 and learn
//! the real port), wires store + hub + routes, serves connections with
//! hyper, and shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::chat::history::History;
use crate::chat::{Chat, StartError};
use crate::config::{Config, Database};
use crate::http::{routes, AppState, PeerAddr};
use crate::limits::{AcceptErrors, Limits};
use crate::metrics::{Metrics, Reason};
use crate::stall::StallTimeout;
use crate::store::memory::MemoryStore;
use crate::store::redis::{presence, subscriber, Redis, RedisCluster};
use crate::store::sqlite::SqliteStore;

/// Per-connection kernel send buffer (Linux doubles it): plenty for chat
/// events, small enough that thousands of stalled readers cost little.
const SEND_BUFFER: usize = 128 * 1024;

/// Largest request head (line + headers) accepted.
const MAX_HEAD_BYTES: usize = 32 * 1024;

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
            .with_per_ip(config.max_long_polls_per_ip, config.max_connections_per_ip),
        );
        Ok(Application {
            listener,
            addr,
            cancel,
            tracker,
            state: AppState {
                chat,
                config: Arc::new(config),
                limits,
                metrics,
            },
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
        } = self;
        let config = state.config.clone();
        let chat = state.chat.clone();
        let metrics = state.metrics.clone();
        let closing = Closing::new(cancel.clone());

        tracker.spawn(background(chat.clone(), config.clone(), cancel.clone()));

        // One copy of the route tree, shared: each connection holds an Arc,
        // each request clones the tree only for as long as it runs.
        let limits = state.limits.clone();
        let svc = Arc::new(warp::service(routes(state)));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut accept_errors = AcceptErrors::default();
        tracing::info!(%addr, db = %config.db, "listening on http://{addr}/");
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        let wait = accept_errors.failed(&e, &metrics);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
            };
            accept_errors.succeeded();
            // One address may hold only its share of connections; beyond
            // it, closed at once (a proxy speaks for many and is not capped).
            let trusted = config
                .trusted_proxies
                .iter()
                .any(|n| n.contains(&peer.ip()));
            let permit = match limits.acquire_connection(peer.ip()) {
                Some(p) => Some(p),
                None if trusted => None,
                None => {
                    metrics.rejected(Reason::too_many_connections);
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // A bounded kernel send buffer bounds what a peer that stops
            // reading can pin, and makes the stall timeout notice it.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
            let svc = svc.clone();
            let io = TokioIo::new(StallTimeout::new(
                stream,
                Duration::from_secs(config.write_timeout),
                metrics.clone(),
            ));
            let closing = closing.clone();
            tracker.spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        // Boxed: hyper keeps a box the size of this future for
                        // the connection's whole life; a pointer is all it needs.
                        Box::pin((*svc).clone().call(req))
                    });
                // Pinned where it is built: passed by value, the connection
                // (most of an idle stream's memory) would be laid out twice
                // in this task (measured: +0.6 KiB per connection).
                let conn = std::pin::pin!(http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    // Request heads above this are refused (431).
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(io, service));
                let _ = until_cancelled(conn, &closing).await;
                drop(permit);
            });
        }

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

/// Tells connections to finish. The token wakes them; the flag is what a
/// connection checks on every other wake.
#[derive(Clone)]
struct Closing {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Closing {
    fn new(token: CancellationToken) -> Self {
        Closing {
            flag: Arc::new(AtomicBool::new(false)),
            token,
        }
    }

    /// Also cancels the token, and with it the background work.
    fn close(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// Serves one connection; once closing, asks it to finish gracefully
/// (answer what is in flight, then close) and waits for that.
///
/// This is on every event's path: a stream's connection task wakes once per
/// event it sends. `select!` on `token.cancelled()` would poll the token's
/// waiter on each wake, and that takes a mutex all connections share (so
/// does `is_cancelled`). Here the waiter is polled only when the task's
/// waker is new (in practice: once); other wakes read one atomic flag.
async fn until_cancelled<C>(mut conn: Pin<&mut C>, closing: &Closing) -> C::Output
where
    C: Future + GracefulShutdown,
{
    let mut cancelled = std::pin::pin!(closing.token.cancelled());
    let mut registered: Option<std::task::Waker> = None;
    let mut shutting_down = false;
    std::future::poll_fn(|cx| {
        if !shutting_down {
            let fired = match &registered {
                Some(w) if w.will_wake(cx.waker()) => closing.flag.load(Ordering::SeqCst),
                _ => {
                    registered = Some(cx.waker().clone());
                    cancelled.as_mut().poll(cx).is_ready()
                }
            };
            if fired {
                shutting_down = true;
                conn.as_mut().shut_down();
            }
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// A connection that can be asked to finish gracefully.
trait GracefulShutdown {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
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
    let (url, history, wait) = (url.clone(), config.history, config.redis_wait);
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
