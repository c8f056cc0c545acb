//! Connection bookkeeping under the server: the connection ceiling (admission and its
//! refusal), what each connection is doing as its timeouts see it, and the watchdog that
//! enforces those timeouts.
//!
//! hyper's own HTTP/1 `header_read_timeout` runs one timer from the moment a connection
//! waits for a request head, so it cannot tell an idle keep-alive connection (closed
//! quietly, after the idle timeout) from a slow request head (answered 408, after the
//! header timeout), and it closes without a reply. Instead, the socket is wrapped in
//! [`Watched`], which sees every read and write, and the service marks where a request
//! starts and ends; [`watchdog`] turns that into one deadline at a time.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::limits::ConnectionLimits;

/// Most connections being refused (answered 503 and lingered on) at once; past it a
/// refused connection is closed without a reply. These descriptors come out of the
/// reserve the connection ceiling leaves.
const MAX_REFUSING: usize = 64;

/// How long a refused or timed-out connection is given to take its reply and close its
/// side, so that closing ours does not reset the connection and destroy the reply
/// before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 64 * 1024;

/// The open connections and the ceiling on them.
#[derive(Debug)]
pub(crate) struct Registry {
    max: usize,
    open: AtomicUsize,
    refusing: AtomicUsize,
    closed: Notify,
}

impl Registry {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Registry {
            max,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            closed: Notify::new(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, or `None` at the ceiling.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("keel_http_connections_open").increment(1.0);
        Some(Slot(self.clone()))
    }

    /// Resolves at the next connection close (each close frees a descriptor); counts
    /// closes from the moment it is called, not from its first poll.
    pub(crate) fn next_close(&self) -> tokio::sync::futures::Notified<'_> {
        self.closed.notified()
    }

    /// Resolves once no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let closed = self.closed.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Answers a connection beyond the ceiling with 503 `connection_limit_reached` and
    /// `Connection: close`, then closes it. The reply and the linger run on their own
    /// task, at most [`MAX_REFUSING`] at once; past that the connection is closed at once.
    pub(crate) fn refuse(self: &Arc<Self>, stream: TcpStream) {
        metrics::counter!("keel_http_connections_refused_total").increment(1);
        let reply = refusal(self.max);
        let claimed = self
            .refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_REFUSING).then_some(n + 1)
            })
            .is_ok();
        if !claimed {
            // Best effort without waiting: the socket's send buffer is empty.
            let _ = stream.try_write(reply.as_bytes());
            return;
        }
        let registry = self.clone();
        tokio::spawn(async move {
            answer_and_close(stream, reply.as_bytes()).await;
            registry.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// A connection's place under the ceiling; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("keel_http_connections_open").decrement(1.0);
        self.0.closed.notify_waiters();
    }
}

fn refusal(max: usize) -> String {
    let body = serde_json::json!({
        "reason": "connection_limit_reached",
        "message": format!(
            "this server already holds its limit of {max} connections; retry shortly"
        ),
        "max_connections": max,
        "retryable": true,
        "retry_after_seconds": 1,
    })
    .to_string();
    http_reply("503 Service Unavailable", &body, &[("retry-after", "1")])
}

/// The 408 a connection gets when its request head is not complete in time.
pub(crate) fn header_timeout_reply(limit: Duration) -> String {
    let body = serde_json::json!({
        "reason": "request_header_timeout",
        "message": format!(
            "the request head did not arrive within {} ms",
            limit.as_millis()
        ),
        "timeout_ms": limit.as_millis() as u64,
    })
    .to_string();
    http_reply("408 Request Timeout", &body, &[])
}

pub(crate) fn http_reply(status: &str, body: &str, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head
}

/// Writes `reply`, closes our side and reads what the client still sends until it closes too or [`LINGER`]
/// passes: closing a socket with unread input resets the connection, and a reset can
/// destroy the reply before the client reads it.
pub(crate) async fn answer_and_close<S>(mut stream: S, reply: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(reply).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

const FRESH: u8 = 0;
const IDLE: u8 = 1;
const READING_HEAD: u8 = 2;
const IN_REQUEST: u8 = 3;

/// What a connection is doing, as its timeouts see it. Shared by the socket wrapper, the
/// service and the watchdog, which all run on the connection's one task, so the atomics
/// only need to be `Sync`, never to order anything between threads.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    phase: AtomicU8,
    /// Micros from `born` to the start of the current phase's deadline.
    since_micros: AtomicU64,
    writes: AtomicU64,
    changed: Notify,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            phase: AtomicU8::new(FRESH),
            since_micros: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            changed: Notify::new(),
        })
    }

    fn mark(&self, phase: u8, restart_clock: bool) {
        if restart_clock {
            let micros = self.born.elapsed().as_micros() as u64;
            self.since_micros.store(micros, Ordering::Relaxed);
        }
        self.phase.store(phase, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn since(&self) -> Instant {
        self.born + Duration::from_micros(self.since_micros.load(Ordering::Relaxed))
    }

    /// Bytes arrived. The first bytes after an idle spell start a request head; a fresh
    /// connection's head deadline already runs from the accept.
    fn read(&self) {
        match self.phase.load(Ordering::Relaxed) {
            FRESH => self.mark(READING_HEAD, false),
            IDLE => self.mark(READING_HEAD, true),
            _ => {}
        }
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// hyper handed a request to the service: no connection deadline until it answers.
    pub(crate) fn request_started(self: &Arc<Self>) -> InRequest {
        self.mark(IN_REQUEST, false);
        InRequest(self.clone())
    }
}

/// Held while the service owns a request; dropping it (the response is ready, or the
/// request was abandoned) makes the connection idle.
#[derive(Debug)]
pub(crate) struct InRequest(Arc<Activity>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.mark(IDLE, true);
    }
}

/// How the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// No request is open: close without a reply (a reply nobody asked for would be
    /// read as the answer to the client's next request).
    Quietly(&'static str),
    /// A request head is incomplete: answer 408, then close.
    HeaderTimeout,
}

/// Resolves when the connection has overrun the deadline of what it is doing. Never
/// resolves while a request is in the service, so a parked long-poll is exempt.
pub(crate) async fn watchdog(activity: &Activity, limits: &ConnectionLimits) -> Cut {
    loop {
        let changed = activity.changed.notified();
        let phase = activity.phase.load(Ordering::Relaxed);
        let (limit, cut) = match phase {
            FRESH => (limits.header_timeout, Cut::Quietly("header")),
            READING_HEAD => (limits.header_timeout, Cut::HeaderTimeout),
            IDLE => (limits.idle_timeout, Cut::Quietly("idle")),
            _ => {
                changed.await;
                continue;
            }
        };
        let writes = activity.writes.load(Ordering::Relaxed);
        tokio::select! {
            _ = changed => continue,
            _ = tokio::time::sleep_until(activity.since() + limit) => {}
        }
        if phase == IDLE && activity.writes.load(Ordering::Relaxed) != writes {
            // The last response is still going out to a slow reader: not idle.
            activity.mark(IDLE, true);
            continue;
        }
        return cut;
    }
}

/// The socket as the server's connection sees it: every read and write also tells the
/// connection's [`Activity`].
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }

    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
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
    use super::{watchdog, Activity, ConnectionLimits, Cut, Duration, Instant, Registry};

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: Some(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_connection_without_a_byte_is_closed_quietly_after_the_header_timeout() {
        let a = Activity::new();
        let started = Instant::now();
        assert_eq!(watchdog(&a, &limits()).await, Cut::Quietly("header"));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn request_in_the_service_has_no_deadline_and_idles_after_it() {
        let a = Activity::new();
        a.read();
        let request = a.request_started();
        let lim = limits();
        let dog = watchdog(&a, &lim);
        tokio::pin!(dog);
        // An hour parked in the handler: the watchdog does not fire.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), &mut dog)
                .await
                .is_err(),
            "no deadline while in the service"
        );
        let answered = Instant::now();
        drop(request);
        assert_eq!(dog.await, Cut::Quietly("idle"));
        assert_eq!(answered.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_after_an_idle_spell_start_the_header_deadline() {
        let a = Activity::new();
        a.read();
        drop(a.request_started());
        tokio::time::advance(Duration::from_secs(100)).await;
        a.read();
        let head_started = Instant::now();
        assert_eq!(watchdog(&a, &limits()).await, Cut::HeaderTimeout);
        assert_eq!(head_started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_still_being_written_is_not_idle() {
        let a = Activity::new();
        a.read();
        drop(a.request_started());
        let lim = limits();
        let dog = watchdog(&a, &lim);
        tokio::pin!(dog);
        assert!(tokio::time::timeout(Duration::from_secs(119), &mut dog)
            .await
            .is_err());
        a.wrote();
        let last_write = Instant::now();
        assert_eq!(dog.await, Cut::Quietly("idle"));
        assert!(last_write.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn ceiling_admits_up_to_its_limit_and_frees_places_on_close() {
        let registry = Registry::new(2);
        let a = registry.admit().expect("first");
        let _b = registry.admit().expect("second");
        assert!(registry.admit().is_none(), "third is over the ceiling");
        let close = registry.next_close();
        drop(a);
        close.await;
        assert!(registry.admit().is_some(), "a place is free again");
    }
}
