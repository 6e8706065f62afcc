//! A connection whose client stops taking bytes is closed after a while. HTTP/1 servers bound how
//! long a request may take to arrive (`header_timeout_ms`, `body_timeout_ms`), but nothing bounds
//! an answer's delivery: a client that stops reading a stream (a hung process, a stalled proxy)
//! would otherwise keep its request, the provider's connection, its in-flight slot and its budget
//! reservation for as long as it keeps the socket open. The writes stall once the socket's
//! buffers are full; after `timeout` without progress the write fails, hyper drops the
//! connection, and the request ends as cut by its client.

use std::io;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` after `timeout` without progress.
#[derive(Debug)]
pub struct StalledWrites<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write waits; dropped as soon as one goes through.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<T> StalledWrites<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        Self { io, timeout, stalled_since: None }
    }

    /// Passes a ready result on (progress: the clock stops); while pending, fails once the
    /// clock runs out.
    fn watch<R>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled_since = None;
            return polled;
        }
        let timeout = self.timeout;
        let deadline = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client took no bytes within server.send_timeout_ms"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StalledWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StalledWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_write_nobody_takes_fails_after_the_timeout() {
        // A 64-byte pipe: the writer stalls as soon as the reader stops reading.
        let (writer, mut reader) = tokio::io::duplex(64);
        let mut writer = StalledWrites::new(writer, Duration::from_millis(50));
        writer.write_all(&[1; 64]).await.unwrap();
        let mut taken = [0; 64];
        reader.read_exact(&mut taken).await.unwrap();
        // Taken: the next write goes through too. Then nobody reads any more: it fails.
        writer.write_all(&[2; 64]).await.unwrap();
        let err = writer.write_all(&[3; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(reader);
    }
}
