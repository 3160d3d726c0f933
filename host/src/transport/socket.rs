//! A device's TCP connection as its TLS session reads and writes it, which
//! the appliance can also hang up from any thread: a quarantine ends every
//! session of the device before it returns, without waiting for each
//! session's task to run.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use rustix::net::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::session::HangUp;

/// The connection, shared with what hangs it up. It closes when the session
/// drops it: what hangs it up holds it weakly.
#[derive(Debug)]
pub(crate) struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        SharedTcp(Arc::new(tcp))
    }

    /// What hangs the connection up: both directions shut down, so that
    /// the device sees the end at once; nothing once the session has
    /// dropped the connection.
    pub(crate) fn hang_up(&self) -> HangUp {
        let tcp: Weak<TcpStream> = Arc::downgrade(&self.0);
        Box::new(move |_reason| {
            if let Some(tcp) = tcp.upgrade() {
                // An error means it is closed already.
                let _ = rustix::net::shutdown(&*tcp, Shutdown::Both);
            }
        })
    }
}

/// Wait until `tcp` is ready, then try `op`; again when readiness was stale.
fn retry<T>(
    cx: &mut Context<'_>,
    ready: impl Fn(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(ready(cx))?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.0;
        let n = ready!(retry(
            cx,
            |cx| tcp.poll_read_ready(cx),
            || tcp.try_read(buf.initialize_unfilled())
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0;
        retry(cx, |cx| tcp.poll_write_ready(cx), || tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0;
        retry(
            cx,
            |cx| tcp.poll_write_ready(cx),
            || tcp.try_write_vectored(bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(rustix::net::shutdown(&*self.0, Shutdown::Write).map_err(io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_hang_up_ends_the_connection_while_its_owner_waits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut ours = SharedTcp::new(listener.accept().await.unwrap().0);
        // Reads and writes go through.
        ours.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        peer.read_exact(&mut buf).await.unwrap();
        peer.write_all(b"pong").await.unwrap();
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // Hung up from elsewhere while its owner is blocked reading: the
        // peer sees the end, and so does the owner.
        let hang_up = ours.hang_up();
        let owner = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            let n = ours.read(&mut buf).await;
            (ours, n.ok())
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        hang_up("quarantined");
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0);
        let (ours, n) = owner.await.unwrap();
        assert_eq!(n, Some(0));
        // Once the owner drops it, a hang-up does nothing.
        drop(ours);
        hang_up("again");
    }
}
