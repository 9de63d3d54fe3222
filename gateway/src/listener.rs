//! A deadline on the HTTP request: a connection that has not sent its whole request head (the
//! WebSocket upgrade) within `GW_HANDSHAKE_TIMEOUT_MS` of being accepted is closed. Without it a
//! client could open TCP connections and send nothing (or a byte a minute): each holds a file
//! descriptor and a task for ever, outside `GW_MAX_CONNECTIONS`, which counts WebSockets only.
//! Once the head is complete (its blank line seen) the stream is transparent: the WebSocket's own
//! ping and idle timeout take over.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a listener: every accepted stream gets the deadline.
pub struct HeadDeadline<L> {
    inner: L,
    timeout: Duration,
}

impl<L> HeadDeadline<L> {
    pub fn new(inner: L, timeout: Duration) -> HeadDeadline<L> {
        HeadDeadline { inner, timeout }
    }
}

impl<L: Listener> Listener for HeadDeadline<L> {
    type Io = Deadlined<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (Deadlined::new(io, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pub struct Deadlined<T> {
    inner: T,
    /// Until the head is complete; `None` after.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of "\r\n\r\n" the bytes read so far end with.
    matched: usize,
}

impl<T> Deadlined<T> {
    fn new(inner: T, timeout: Duration) -> Deadlined<T> {
        Deadlined {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    /// Feeds newly read bytes; true once the head's terminating blank line was seen.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == END[0] {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return true;
            }
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadlined<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            metrics::counter!("gateway_handshake_timeouts_total").increment(1);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete HTTP request within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            let new = buf.filled()[before..].to_vec();
            if this.scan(&new) {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadlined<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_head_ends_at_its_blank_line_across_reads() {
        let mut d = Deadlined::new(tokio::io::empty(), Duration::from_secs(1));
        assert!(!d.scan(b"GET /ws HTTP/1.1\r\nHost: x\r"));
        assert!(!d.scan(b"\n\r"));
        assert!(d.scan(b"\n"));
        let mut d = Deadlined::new(tokio::io::empty(), Duration::from_secs(1));
        assert!(!d.scan(b"a\r\n\r\r\nb"));
        assert!(d.scan(b"\r\n\r\n"));
    }
}
