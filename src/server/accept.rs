//! Accept loops that survive running out of descriptors. `accept` fails at
//! once, again and again, while the process is at its descriptor limit
//! (EMFILE) or the system at its (ENFILE), or memory for sockets is short: a
//! loop that retries at once spins a core and, if it logs, floods the log.
//! These back off (10 ms doubling to 1 s), log once when accepting stops and
//! once when it works again, and leave the connections already accepted
//! alone: they keep being served.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::conn::{Conn, Limits};

/// Accepted connections waiting for the HTTP/2 server.
const QUEUE: usize = 64;
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// Accepting counts as working again after this long without a failure
/// (a backlog of connections can fill the descriptors once more as it is
/// drained: one line then, not one per connection).
const QUIET: Duration = Duration::from_secs(1);

/// The state of one accept loop (see the module doc).
pub(crate) struct Backoff {
    listener: String,
    pause: Duration,
    /// Failed accepts since accepting stopped; `None` while it works.
    failing: Option<u64>,
    last_failure: tokio::time::Instant,
}

impl Backoff {
    pub(crate) fn new(listener: String) -> Backoff {
        Backoff {
            listener,
            pause: FIRST_PAUSE,
            failing: None,
            last_failure: tokio::time::Instant::now(),
        }
    }

    /// After a failed `accept`: waits before the next one when the failure
    /// is about resources (it would fail again at once), not when it is
    /// about the one connection (aborted before it was accepted).
    pub(crate) async fn failed(&mut self, e: &io::Error) {
        if !exhausted(e) {
            tracing::debug!(listener = %self.listener, error = %e, "a connection failed before it was accepted");
            return;
        }
        if self.failing.is_none() {
            tracing::error!(
                listener = %self.listener,
                error = %e,
                "cannot accept connections (out of file descriptors or socket memory); backing off, open connections are still served (raise the descriptor limit, e.g. LimitNOFILE= in the unit)"
            );
        }
        *self.failing.get_or_insert(0) += 1;
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        // Counted from the end of the pause: the quiet time is time spent
        // trying.
        self.last_failure = tokio::time::Instant::now();
    }

    /// Ready once accepting has gone [`QUIET`] without a failure, after it
    /// stopped; never while it works. Then call [`Backoff::recovered`].
    pub(crate) async fn quiet(&self) {
        match self.failing {
            Some(_) => tokio::time::sleep_until(self.last_failure + QUIET).await,
            None => std::future::pending().await,
        }
    }

    pub(crate) fn recovered(&mut self) {
        if let Some(failed_accepts) = self.failing.take() {
            tracing::info!(listener = %self.listener, failed_accepts, "accepting connections again");
        }
        self.pause = FIRST_PAUSE;
    }
}

/// Errors that the next `accept` would repeat at once.
fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// A listener of either kind.
pub(crate) trait Listen: Send + Sync + 'static {
    type Io: Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Listen for TcpListener {
    type Io = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        TcpListener::poll_accept(self, cx).map_ok(|(s, _)| {
            // Small unary calls: Nagle must not hold responses back.
            let _ = s.set_nodelay(true);
            s
        })
    }
}

impl Listen for UnixListener {
    type Io = UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

/// The connections accepted on `listener` (named `name` in log lines),
/// under the connection `limits`.
pub(crate) fn incoming<L: Listen>(
    listener: L,
    name: String,
    limits: Arc<Limits>,
) -> ReceiverStream<io::Result<Conn<L::Io>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(name);
        loop {
            let accepted = tokio::select! {
                a = std::future::poll_fn(|cx| listener.poll_accept(cx)) => a,
                () = backoff.quiet() => {
                    backoff.recovered();
                    continue;
                }
                () = tx.closed() => return,
            };
            match accepted {
                Ok(s) => {
                    // At the cap the connection is closed (dropped) at once.
                    let Some(slot) = limits.admit() else {
                        continue;
                    };
                    if tx.send(Ok(Conn::new(s, slot, &limits))).await.is_err() {
                        return;
                    }
                }
                Err(e) => backoff.failed(&e).await,
            }
        }
    });
    ReceiverStream::new(rx)
}
