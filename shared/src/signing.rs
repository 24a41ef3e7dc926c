//! Signed internal requests: a participant obeys only the cluster's own
//! services. Every request to `/internal/...` carries the time it was sent,
//! a random nonce and an HMAC-SHA256, keyed by the cluster secret, over
//! its method, path and query, time, nonce and body:
//!
//! ```text
//! x-wallet-timestamp: <unix milliseconds>
//! x-wallet-nonce:     <32 hex digits>
//! x-wallet-signature: hex(HMAC-SHA256(secret, "METHOD\npath?query\ntimestamp\nnonce\n" ++ body))
//! ```
//!
//! Callers sign with [`send`] (or [`sign`]); a participant checks with the
//! [`Verifier`] layer. A request sent more than the replay window away from
//! the receiver's clock is refused. Inside the window a captured request
//! could be sent again; that is harmless for every route but those in
//! [`routes::ONCE_ONLY`], whose signatures the verifier remembers for the
//! window and accepts once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{ErrorCode, Rejection};
use crate::routes;
use crate::secret::Secret;

/// When the request was signed, in milliseconds since the Unix epoch.
pub const TIMESTAMP: &str = "x-wallet-timestamp";
/// 16 random bytes in hex: two requests never share a signature.
pub const NONCE: &str = "x-wallet-nonce";
/// The HMAC-SHA256, in hex.
pub const SIGNATURE: &str = "x-wallet-signature";

/// Default replay window: a request is accepted this far from the
/// receiver's clock, either way.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Largest body the verifier reads (a partition move's chunk of rows; the
/// routes' own limits apply after it).
pub const MAX_BODY: usize = 64 << 20;

/// Most signatures of [`routes::ONCE_ONLY`] requests remembered at once;
/// those are operators' calls, a handful a second at most.
const MAX_REMEMBERED: usize = 100_000;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &Secret, method: &str, path: &str, timestamp: &str, nonce: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose()).expect("HMAC takes any key length");
    for part in [method, path, timestamp, nonce] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The headers that sign `method path_and_query` with `body`, sent now.
pub fn headers(secret: &Secret, method: &str, path_and_query: &str, body: &[u8]) -> HeaderMap {
    headers_at(secret, method, path_and_query, body, now_ms())
}

/// The same, as if sent at `unix_ms` (tests of the replay window).
pub fn headers_at(
    secret: &Secret,
    method: &str,
    path_and_query: &str,
    body: &[u8],
    unix_ms: i64,
) -> HeaderMap {
    let timestamp = unix_ms.to_string();
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random source");
    let nonce = hex::encode(nonce);
    let mut mac = mac(secret, method, path_and_query, &timestamp, &nonce);
    mac.update(body);
    let signature = hex::encode(mac.finalize().into_bytes());
    let mut headers = HeaderMap::with_capacity(3);
    for (name, value) in [
        (TIMESTAMP, timestamp),
        (NONCE, nonce),
        (SIGNATURE, signature),
    ] {
        headers.insert(name, HeaderValue::from_str(&value).expect("ASCII"));
    }
    headers
}

/// Signs a built request in place. Its body must be in memory (JSON
/// bodies are); a streamed body is signed as empty and will be refused.
pub fn sign(secret: &Secret, request: &mut reqwest::Request) {
    let url = request.url();
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let body = request.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
    let signed = headers(secret, request.method().as_str(), &path, body);
    request.headers_mut().extend(signed);
}

/// Sends `builder` signed with `secret` (unsigned if there is none: the
/// receiver then refuses any internal route), carrying the current span's
/// `traceparent` when traces are on. The one way every service, walletctl
/// and the tests call a participant.
pub async fn send(
    secret: Option<&Secret>,
    builder: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let (client, request) = builder.build_split();
    let mut request = request?;
    if let Some(secret) = secret {
        sign(secret, &mut request);
    }
    // The trace goes on with the call (unsigned: it changes no meaning).
    if let Some(traceparent) = crate::traces::current_traceparent() {
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            request.headers_mut().insert(crate::traces::TRACEPARENT, v);
        }
    }
    client.execute(request).await
}

/// A service's cluster secret, or a clear reason not to start without one.
pub fn required(secret: Option<Secret>, service: &str) -> anyhow::Result<Secret> {
    secret.ok_or_else(|| {
        anyhow::anyhow!(
            "no cluster secret: a {service} signs or checks every internal request with it; \
             set cluster_secret_file (WALLET_CLUSTER_SECRET_FILE) to a file holding at least \
             {} random characters (e.g. `openssl rand -hex 32`), the same file for every service",
            crate::secret::MIN_SECRET_BYTES
        )
    })
}

/// Paths a participant serves to anyone: probes and metrics.
pub const OPEN_PATHS: [&str; 4] = ["/livez", "/readyz", "/metrics", "/health"];

/// Checks the signature of every request but those to [`OPEN_PATHS`]
/// (so no spelling of an internal path slips through unsigned).
#[derive(Clone)]
pub struct Verifier {
    secret: Secret,
    window_ms: i64,
    /// Signatures of accepted [`routes::ONCE_ONLY`] requests, with when
    /// they may be forgotten (their timestamp has left the window).
    seen: Arc<Mutex<HashMap<Vec<u8>, i64>>>,
}

impl Verifier {
    pub fn new(secret: Secret, window: Duration) -> Self {
        Verifier {
            secret,
            window_ms: window.as_millis() as i64,
            seen: Arc::default(),
        }
    }

    /// The axum middleware: `router.layer(axum::middleware::from_fn_with_state(verifier, Verifier::layer))`.
    pub async fn layer(State(v): State<Verifier>, req: Request, next: Next) -> Response {
        if OPEN_PATHS.contains(&req.uri().path()) {
            return next.run(req).await;
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        match v.check(req).await {
            Ok(req) => next.run(req).await,
            Err(why) => {
                // Never the signature itself: only why it was refused.
                tracing::warn!(%method, %path, why, "refused an internal request");
                let body = Rejection::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "internal routes take only requests signed with the cluster secret: {why}"
                    ),
                );
                (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
            }
        }
    }

    /// The request, its body read back in, if it is signed and fresh.
    async fn check(&self, req: Request) -> Result<Request, &'static str> {
        let (parts, body) = req.into_parts();
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let (Some(timestamp), Some(nonce), Some(signature)) =
            (header(TIMESTAMP), header(NONCE), header(SIGNATURE))
        else {
            return Err("not signed");
        };
        let sent: i64 = timestamp.parse().map_err(|_| "malformed timestamp")?;
        let now = now_ms();
        if (now - sent).abs() > self.window_ms {
            return Err("timestamp outside the replay window (stale, or clocks apart)");
        }
        let signature = hex::decode(signature).map_err(|_| "malformed signature")?;
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let mut mac = mac(&self.secret, parts.method.as_str(), path, timestamp, nonce);
        let body = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| "body unreadable or too large")?;
        mac.update(&body);
        // Constant time.
        mac.verify_slice(&signature).map_err(|_| "bad signature")?;
        if routes::ONCE_ONLY
            .iter()
            .any(|r| r.matches(parts.uri.path()))
        {
            self.once(signature, sent + self.window_ms, now)?;
        }
        Ok(Request::from_parts(parts, Body::from(body)))
    }

    /// Accepts a signature once while its request is inside the window.
    fn once(&self, signature: Vec<u8>, forget_at: i64, now: i64) -> Result<(), &'static str> {
        let mut seen = self.seen.lock().expect("not poisoned");
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, &mut until| until >= now);
            if seen.len() >= MAX_REMEMBERED {
                return Err("too many operator requests in the replay window");
            }
        }
        if seen.insert(signature, forget_at).is_some() {
            return Err("replayed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn secret(s: &str) -> Secret {
        Secret::from_text(&format!("{s:0<40}")).unwrap()
    }

    fn router(v: Verifier) -> axum::Router {
        axum::Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route(
                routes::MOVEMENTS.pattern(),
                post(|b: String| async move { b }),
            )
            .route(routes::DISCARD.pattern(), post(|| async { "dropped" }))
            .layer(axum::middleware::from_fn_with_state(v, Verifier::layer))
    }

    fn request(method: &str, path: &str, body: &str, signed: Option<HeaderMap>) -> Request {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_string()))
            .unwrap();
        if let Some(h) = signed {
            req.headers_mut().extend(h);
        }
        req
    }

    async fn status(r: &axum::Router, req: Request) -> u16 {
        r.clone().oneshot(req).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn only_requests_signed_with_the_secret_and_fresh_pass() {
        let key = secret("a");
        let r = router(Verifier::new(key.clone(), DEFAULT_WINDOW));
        let path = routes::MOVEMENTS.pattern();
        let good = || headers(&key, "POST", path, b"{}");
        assert_eq!(
            status(&r, request("POST", path, "{}", Some(good()))).await,
            200
        );
        assert_eq!(status(&r, request("GET", "/livez", "", None)).await, 200);
        // Unsigned, another secret, another body, another path, another method.
        assert_eq!(status(&r, request("POST", path, "{}", None)).await, 401);
        let other = headers(&secret("b"), "POST", path, b"{}");
        assert_eq!(
            status(&r, request("POST", path, "{}", Some(other))).await,
            401
        );
        assert_eq!(
            status(&r, request("POST", path, "{1}", Some(good()))).await,
            401
        );
        let q = format!("{path}?x=1");
        assert_eq!(
            status(&r, request("POST", &q, "{}", Some(good()))).await,
            401
        );
        assert_eq!(
            status(&r, request("PUT", path, "{}", Some(good()))).await,
            401
        );
        // Signed 31 s ago, or 31 s ahead; 25 s ago is inside the window.
        for (skew, want) in [(-31_000, 401), (31_000, 401), (-25_000, 200)] {
            let h = headers_at(&key, "POST", path, b"{}", now_ms() + skew);
            assert_eq!(status(&r, request("POST", path, "{}", Some(h))).await, want);
        }
        // Unknown paths are refused before they are looked up, however spelled.
        for path in [
            "//internal/v1/movements",
            "/%69nternal/v1/movements",
            "/livez/",
        ] {
            assert_eq!(
                status(&r, request("POST", path, "{}", None)).await,
                401,
                "{path}"
            );
        }
        assert_eq!(
            status(&r, request("GET", "/internal/v1/nothing", "", None)).await,
            401
        );
    }

    #[tokio::test]
    async fn a_once_only_request_is_accepted_once() {
        let key = secret("a");
        let r = router(Verifier::new(key.clone(), DEFAULT_WINDOW));
        let path = routes::DISCARD.with(3);
        let signed = headers(&key, "POST", &path, b"");
        let first = request("POST", &path, "", Some(signed.clone()));
        assert_eq!(status(&r, first).await, 200);
        assert_eq!(
            status(&r, request("POST", &path, "", Some(signed))).await,
            401
        );
        let fresh = headers(&key, "POST", &path, b"");
        assert_eq!(
            status(&r, request("POST", &path, "", Some(fresh))).await,
            200
        );
        // Idempotent routes may be sent twice.
        let m = routes::MOVEMENTS.pattern();
        let signed = headers(&key, "POST", m, b"{}");
        for _ in 0..2 {
            let again = request("POST", m, "{}", Some(signed.clone()));
            assert_eq!(status(&r, again).await, 200);
        }
    }

    #[test]
    fn a_missing_secret_stops_the_service_with_a_clear_message() {
        let e = required(None, "participant").unwrap_err().to_string();
        assert!(e.contains("WALLET_CLUSTER_SECRET_FILE"), "{e}");
    }
}
