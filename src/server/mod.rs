//! The connection loop: accepts TCP connections and serves each with hyper,
//! HTTP/1.1 or HTTP/2, in the clear or over TLS, until told to close.
//!
//! - Plain HTTP: HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when the
//!   first bytes are the HTTP/2 preface.
//! - HTTPS ([`tls`]): the protocol is chosen by ALPN (h2, http/1.1); the
//!   certificate comes from files or from ACME ([`acme`]).
//! - Every connection: `TCP_NODELAY`, a bounded kernel send buffer and the
//!   stall timeout under TLS, the peer's address (and whether it came over
//!   TLS) in each request's extensions, and a graceful end on shutdown
//!   (HTTP/1.1: finish the response in hand; HTTP/2: GOAWAY, then let open
//!   streams finish).

#[cfg(feature = "tls")]
pub mod acme;
#[cfg(feature = "tls")]
mod first_bytes;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(not(feature = "tls"))]
#[path = "no_tls.rs"]
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use self::tls::Tls;
use crate::http::{Https, PeerAddr};
use crate::limits::{AcceptErrors, Limits, Permit};
use crate::metrics::{Metrics, Reason};
use crate::stall::StallTimeout;

/// Per-connection kernel send buffer (Linux doubles it): plenty for chat
/// events, small enough that thousands of stalled readers cost little.
const SEND_BUFFER: usize = 128 * 1024;

/// Largest request head (line + headers) accepted.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// How long a new connection may take to say anything: a plain one from
/// its accept, an HTTPS one from the end of its handshake
/// ([`first_bytes`]). The same bound HTTP/1.1 puts on reading a head.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
#[cfg(feature = "tls")]
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between looks at a connection whose first bytes could
/// still be an HTTP/2 preface or an HTTP/1.1 request.
const PREFACE_PAUSE_MAX: Duration = Duration::from_millis(250);

/// HTTP/2 streams open at once on one connection: a browser's tabs (one
/// event stream each) and their requests fit many times over.
const H2_MAX_STREAMS: u32 = 128;

/// What hyper may hold per HTTP/2 stream waiting for the peer's flow-control
/// window: a stream that is not read costs at most this, never the others'
/// progress (each stream has its own window).
const H2_SEND_BUFFER: usize = 64 * 1024;

/// Serves connections with one route tree; shared by every connection.
pub struct Server<S> {
    /// One copy of the route tree, shared: each connection holds an Arc,
    /// each request clones the tree only for as long as it runs.
    svc: Arc<S>,
    tls: Option<Arc<Tls>>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Per-address connection shares, and the proxies exempt from them.
    admission: Option<(Arc<Limits>, Arc<[IpNet]>)>,
}

impl<S, B> Server<S>
where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(
        svc: S,
        tls: Option<Arc<Tls>>,
        write_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            // Request heads above this are refused (431).
            .max_buf_size(MAX_HEAD_BYTES);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_header_list_size(MAX_HEAD_BYTES as u32)
            // A peer that vanished without a FIN is found by pings.
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20));
        Server {
            svc: Arc::new(svc),
            tls,
            h1,
            h2,
            write_timeout,
            metrics,
            admission: None,
        }
    }

    /// Caps connections per client address (`--max-connections-per-ip`):
    /// beyond its share a new connection is closed at once. A trusted proxy
    /// speaks for many clients and is not capped.
    pub fn admit_with(mut self, limits: Arc<Limits>, trusted: Arc<[IpNet]>) -> Self {
        self.admission = Some((limits, trusted));
        self
    }

    /// Accepts until `shutdown` completes; each connection runs on
    /// `tracker` and finishes gracefully once `closing` closes. Also keeps
    /// the TLS certificate current (SIGHUP reload, ACME renewal) meanwhile.
    pub async fn accept_until(
        self,
        listener: &TcpListener,
        tracker: &TaskTracker,
        closing: &Closing,
        shutdown: impl Future<Output = ()>,
    ) {
        if let Some(tls) = self.tls.clone() {
            let cancel = closing.token.clone();
            tracker.spawn(async move { tls.maintain(cancel).await });
        }
        let server = Arc::new(self);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut accept_errors = AcceptErrors::default();
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning
                        // (counted; logged at most once a second).
                        let wait = accept_errors.failed(&e, &server.metrics);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
            };
            accept_errors.succeeded();
            let permit = match &server.admission {
                None => None,
                Some((limits, trusted)) => match limits.acquire_connection(peer.ip()) {
                    Some(p) => Some(p),
                    None if trusted.iter().any(|n| n.contains(&peer.ip())) => None,
                    None => {
                        server.metrics.rejected(Reason::too_many_connections);
                        drop(stream);
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            // A bounded kernel send buffer bounds what a peer that stops
            // reading can pin, and makes the stall timeout notice it.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
            let closing = closing.clone();
            let server = server.clone();
            match server.tls.clone() {
                None => tracker.spawn(server.plain(stream, peer, closing, permit)),
                // Boxed: a TLS connection's state is large, and plain
                // connections should not reserve room for it.
                Some(tls) => tracker.spawn(async move {
                    Box::pin(server.secure(&tls, stream, peer, &closing)).await;
                    drop(permit);
                }),
            };
        }
    }

    /// Plain HTTP: HTTP/2 with prior knowledge if the preface comes, else
    /// HTTP/1.1.
    ///
    /// This is the task of every plain connection, and an idle SSE stream's
    /// largest allocation, so it is one async block that builds the
    /// HTTP/1.1 connection in place: an `async fn` keeps a second copy of
    /// its arguments for the task's whole life, each nested one adds its
    /// own, and the first-bytes wait (two timers and a select) is boxed
    /// while it lasts rather than reserved for ever. The first shape of
    /// this task (a spawned block, `plain`, `serve_h1`, `until_cancelled`)
    /// took 1,304 bytes around a 712-byte hyper connection.
    #[allow(clippy::manual_async_fn)] // an `async fn` is what it avoids
    fn plain(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        closing: Closing,
        permit: Option<Permit>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, starts_h2(&stream));
            let h2 = match Box::pin(closing.until_closed(first)).await {
                Some(Ok(Some(h2))) => h2,
                _ => return,
            };
            let io = TokioIo::new(self.stall(stream));
            if h2 {
                Box::pin(self.serve_h2(io, peer, false, &closing)).await
            } else {
                let conn = self.h1.serve_connection(io, self.service(peer, false));
                let _ = until_cancelled(std::pin::pin!(conn), &closing).await;
            }
            drop(permit);
        }
    }

    #[cfg(feature = "tls")]
    async fn secure(&self, tls: &Tls, stream: TcpStream, peer: SocketAddr, closing: &Closing) {
        use self::tls::{ALPN_ACME, ALPN_H2};
        let accept = tls.acceptor.accept(self.stall(stream));
        let stream = tokio::select! {
            () = closing.token.cancelled() => return,
            done = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept) => match done {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            },
        };
        let io = TokioIo::new(first_bytes::FirstBytes::new(stream, FIRST_BYTES_TIMEOUT));
        match io.inner().get_ref().get_ref().1.alpn_protocol() {
            // A TLS-ALPN-01 check: the handshake was the answer.
            Some(ALPN_ACME) => {}
            Some(ALPN_H2) => self.serve_h2(io, peer, true, closing).await,
            _ => self.serve_h1(io, peer, true, closing).await,
        }
    }

    #[cfg(not(feature = "tls"))]
    async fn secure(&self, tls: &Tls, _: TcpStream, _: SocketAddr, _: &Closing) {
        match *tls {}
    }

    fn stall(&self, stream: TcpStream) -> StallTimeout<TcpStream> {
        StallTimeout::new(stream, self.write_timeout, self.metrics.clone())
    }

    /// HTTP/1.1 over TLS (plain connections build theirs in [`Self::plain`]).
    #[cfg(feature = "tls")]
    async fn serve_h1<I>(&self, io: I, peer: SocketAddr, https: bool, closing: &Closing)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // Pinned where it is built: passed by value, the connection (most
        // of an idle stream's memory) would be laid out twice in this task
        // (measured: +0.6 KiB per connection).
        let conn = std::pin::pin!(self.h1.serve_connection(io, self.service(peer, https)));
        let _ = until_cancelled(conn, closing).await;
    }

    async fn serve_h2<I>(&self, io: I, peer: SocketAddr, https: bool, closing: &Closing)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let conn = std::pin::pin!(self.h2.serve_connection(io, self.service(peer, https)));
        let _ = until_cancelled(conn, closing).await;
    }

    /// The route tree for one connection's requests, each told who asks.
    fn service(
        &self,
        peer: SocketAddr,
        https: bool,
    ) -> impl hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<B>,
        Error = Infallible,
        Future = Pin<Box<S::Future>>,
    > + Clone {
        let svc = self.svc.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            if https {
                req.extensions_mut().insert(Https);
            }
            // Boxed: hyper keeps a box the size of this future for the
            // connection's whole life; a pointer is all it needs.
            Box::pin((*svc).clone().call(req))
        })
    }
}

/// Waits for the client's first bytes and tells whether they begin the
/// HTTP/2 connection preface (`PRI * HTTP/2.0`); `None` if the client
/// closed first.
async fn starts_h2(stream: &TcpStream) -> Option<bool> {
    const PREFIX: &[u8] = b"PRI ";
    let mut buf = [0u8; 4];
    // A few bytes that could still be either ("P" starts POST too): wait
    // for more. Peek would return at once, so sleep, doubling up to a cap:
    // a peer that sends "P" and stalls costs a few dozen wake-ups over
    // FIRST_BYTES_TIMEOUT, not 200 a second.
    let mut pause = Duration::from_millis(2);
    loop {
        stream.readable().await.ok()?;
        let n = stream.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if n == PREFIX.len() || buf[..n] != PREFIX[..n] {
            return Some(buf[..n] == *PREFIX);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PREFACE_PAUSE_MAX);
    }
}

/// Tells connections to finish. The token wakes them; the flag is what a
/// connection checks on every other wake.
#[derive(Clone)]
pub struct Closing {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Closing {
    pub fn new(token: CancellationToken) -> Self {
        Closing {
            flag: Arc::new(AtomicBool::new(false)),
            token,
        }
    }

    /// Also cancels the token, and with it the background work.
    pub fn close(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// `fut`'s output, or `None` once closing.
    async fn until_closed<F: Future>(&self, fut: F) -> Option<F::Output> {
        tokio::select! {
            () = self.token.cancelled() => None,
            out = fut => Some(out),
        }
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
///
/// A plain function returning the future (not an `async fn`): its state is
/// the closure's captures only, held once for the connection's life.
fn until_cancelled<'a, C>(
    mut conn: Pin<&'a mut C>,
    closing: &'a Closing,
) -> impl Future<Output = C::Output> + 'a
where
    C: Future + GracefulShutdown,
{
    let mut cancelled = Box::pin(closing.token.cancelled());
    let mut registered: Option<std::task::Waker> = None;
    let mut shutting_down = false;
    std::future::poll_fn(move |cx| {
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
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// HTTP/2: GOAWAY, then open streams run to their end (the hub ends every
/// event stream with its `retry` hint).
impl<I, S> GracefulShutdown for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Writes `first`, then `rest` once the server has looked (and found
    /// the first bytes could be either), and returns what it decided.
    async fn decide(first: &[u8], rest: &[u8]) -> Option<bool> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(first).await.unwrap();
        let decided = tokio::spawn(async move { starts_h2(&server).await });
        // Let it see only the first bytes and pause at least once.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!decided.is_finished(), "{first:?} alone decides nothing");
        client.write_all(rest).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), decided)
            .await
            .expect("decided once the rest came")
            .unwrap()
    }

    #[tokio::test]
    async fn first_bytes_split_anywhere_still_tell_h2c_from_http1() {
        assert_eq!(decide(b"P", b"OST / HTTP/1.1\r\n").await, Some(false));
        assert_eq!(decide(b"PR", b"I * HTTP/2.0\r\n").await, Some(true));
        assert_eq!(decide(b"PRI", b" * HTTP/2.0\r\n").await, Some(true));
    }
}
