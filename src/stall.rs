//! A connection wrapper that gives up on peers that stop reading.
//!
//! A subscriber that never reads fills its socket buffers; hyper then stops
//! polling the SSE body, so the stream itself never notices. This wrapper
//! notices at the socket: when a write has been pending (the peer's window
//! is closed) for longer than the limit, it fails the write, hyper closes
//! the connection, and the stream's guards give back its place. The timer
//! exists only while a write is blocked, so idle connections pay nothing.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics::Metrics;

pub struct StallTimeout<T> {
    inner: T,
    limit: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<T> StallTimeout<T> {
    /// `limit` of zero disables the check.
    pub fn new(inner: T, limit: Duration, metrics: Arc<Metrics>) -> Self {
        StallTimeout {
            inner,
            limit: (!limit.is_zero()).then_some(limit),
            timer: None,
            metrics,
        }
    }

    /// Called when the inner write is pending: arms the timer, or fails if
    /// it has run out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.timer = None;
                self.metrics.subscribers_dropped_total.inc();
                tracing::warn!(
                    seconds = limit.as_secs(),
                    "peer stopped reading; connection dropped"
                );
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stopped reading",
                ))
            }
        }
    }

    fn progressed<R>(
        &mut self,
        r: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match r {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_limit_fails() {
        // A duplex pipe with a tiny buffer that nobody reads.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = StallTimeout::new(a, Duration::from_secs(3), Arc::new(Metrics::default()));
        let err = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_moving_reader_is_fine() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = StallTimeout::new(a, Duration::from_secs(3), Arc::new(Metrics::default()));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 256 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += b.read(&mut buf).await.unwrap();
            }
        });
        w.write_all(&[0u8; 256]).await.unwrap();
        reader.await.unwrap();
    }
}
