//! How both services serve HTTP/1.1: an accept loop with a cap on open
//! connections and a header-read timeout, and the graceful shutdown of
//! [`telemetry::shutdown_with_deadline`](crate::telemetry::shutdown_with_deadline).
//!
//! - At most `max_connections` connections are open at once. Past it the
//!   loop stops accepting: new connections wait in the kernel's accept
//!   queue (the listen backlog) until one closes, and past the backlog the
//!   kernel drops their SYNs and the client retries. Nothing is read from
//!   them, so they cost the process nothing.
//! - A connection must send a request's complete headers within
//!   `header_read_timeout` of opening and of its previous response, or it is
//!   closed: that bounds a slow client's headers (slowloris) and how long a
//!   keep-alive connection may sit idle (hyper starts the same timer when a
//!   response is done).
//! - Each connection's read and write buffers hold at most
//!   `connection_buffer_bytes` (hyper's `max_buf_size`; it starts each at
//!   8 KB, its floor): headers that do not fit are refused `431`, and a
//!   client cannot make its connection's buffers grow past it.
//!
//! What one connection costs while its request is served (coordinator,
//! 10,000 in flight, measured with heaptrack): hyper's two buffers (8 KB
//! each), its task, the request's handler and what it waits on. Middleware
//! goes around a router with [`around`], once, rather than with
//! `Router::layer`, which wraps every route on its own: a request then
//! clones each level's boxed services again at every level below it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; more wait in the accept queue.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, counted from the
    /// connection's start and from the end of its previous response (so
    /// also the keep-alive idle limit).
    pub header_read_timeout: Duration,
    /// Largest read or write buffer of one connection (hyper's
    /// `max_buf_size`; raised to [`MIN_CONNECTION_BUFFER_BYTES`] if lower):
    /// a request's headers must fit in it.
    pub connection_buffer_bytes: usize,
}

/// hyper's floor for a connection's buffers (and the size each starts at).
pub const MIN_CONNECTION_BUFFER_BYTES: usize = 8192;

/// `layer` around the whole of `router`: every request goes through it
/// once, and cloning it per request clones `router` (shared, not copied).
/// `Router::layer` instead wraps each route in a boxed service of its own,
/// and a request clones every boxed level below each one it passes (with
/// the coordinator's three levels, about 12 KB per request in flight).
pub fn around<L>(router: Router, layer: L) -> Router
where
    L: tower::Layer<Router>,
    L::Service: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<axum::extract::Request>>::Future: Send + 'static,
{
    Router::new().fallback_service(layer.layer(router))
}

/// Serves `router` on `listener`, over TLS when `tls` is given (each
/// handshake in its connection's task, bounded by
/// [`HANDSHAKE_TIMEOUT`](crate::tls::HANDSHAKE_TIMEOUT)), until `stop`
/// resolves; then stops accepting, lets each connection finish the request
/// it is on, and returns once every connection closed or `deadline`
/// resolved, whichever is first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl Future<Output = ()> + Send,
    deadline: impl Future<Output = ()> + Send,
) {
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let open = Arc::new(Semaphore::new(max));
    let (closing, closing_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(
            limits
                .connection_buffer_bytes
                .max(MIN_CONNECTION_BUFFER_BYTES),
        )
        // A client that sends its request and closes its side at once is
        // still served: the request runs (and a transfer with it) rather
        // than being dropped unstarted when the end of its stream is read.
        .half_close(true);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers go out when written, not when the client's
                    // acknowledgement of the previous segment comes back.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let (http, router, closing) = (http.clone(), router.clone(), closing_rx.clone());
        // Two kinds of task: a plain connection's does not carry the room
        // a TLS session takes (a task is as large as its largest state).
        match tls.clone() {
            None => {
                tokio::spawn(async move {
                    serve_connection(http, stream, router, closing).await;
                    drop(permit);
                });
            }
            Some(config) => {
                tokio::spawn(async move {
                    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    match tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(stream)) => serve_connection(http, stream, router, closing).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    tokio::select! {
        // Every permit back: every connection closed.
        _ = open.acquire_many(max as u32) => {}
        () = deadline => {}
    }
}

/// One connection, plain or TLS, until it ends or the server closes (then
/// it finishes the request it is on).
async fn serve_connection<I>(
    http: hyper::server::conn::http1::Builder,
    io: I,
    router: Router,
    mut closing: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let connection = http.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended");
            }
        }
        () = async { drop(closing.wait_for(|c| *c).await) } => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
