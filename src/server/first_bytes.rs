//! A deadline on a connection's first request bytes, for HTTPS.
//!
//! A plain connection that says nothing is closed after
//! `FIRST_BYTES_TIMEOUT` (its first bytes decide HTTP/1.1 or h2c), and the
//! TLS handshake has a timeout of its own. But after the handshake hyper
//! waits for the first request (HTTP/1.1) or the preface (HTTP/2) for as
//! long as the peer keeps the socket open: a client could finish handshakes
//! and hold connections for ever. This wrapper fails the reads once the
//! deadline passes without a byte. The timer lives only until the first
//! byte arrives.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

pub struct FirstBytes<T> {
    inner: T,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> FirstBytes<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return r;
        };
        match r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.deadline = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.deadline = None;
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request after the TLS handshake",
                    )))
                }
            },
            // End of stream or an error: hyper ends the connection.
            done => done,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_says_nothing_is_cut_at_the_deadline() {
        let (_peer, ours) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(ours, LIMIT);
        let started = tokio::time::Instant::now();
        let e = tokio::time::timeout(LIMIT * 2, conn.read(&mut [0; 8]))
            .await
            .expect("cut at the deadline, not left waiting")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_bytes_silence_is_allowed() {
        let (mut peer, ours) = tokio::io::duplex(64);
        let mut conn = FirstBytes::new(ours, LIMIT);
        peer.write_all(b"GET").await.unwrap();
        let mut buf = [0; 8];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 3);
        // Twice the deadline with nothing: still open, and it still reads.
        let later = tokio::spawn(async move {
            tokio::time::sleep(LIMIT * 2).await;
            peer.write_all(b" /").await.unwrap();
            peer
        });
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);
        drop(later.await.unwrap());
    }
}
