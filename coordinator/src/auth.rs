//! Who is calling: every public call (`/v1/...`) and admin call
//! (`/internal/v1/...`) carries `Authorization: Bearer wk_<key_id>_<secret>`.
//! The keys' records (tenant, scopes, rate, keyed hash; see
//! `wallet_shared::auth`) are loaded from etcd at start and followed with a
//! watch, so a new or revoked key takes effect within a watch event.
//!
//! The hot path is a hash-map lookup by key id and one HMAC of the secret
//! (constant-time compare); an unknown id costs no hash. Then the key's
//! token bucket, if it has a rate. The handlers ask the [`Caller`] for the
//! scope they need and whose accounts it may touch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use etcd_client::WatchOptions;
use wallet_shared::auth::{unhex, ApiKey, KeyHasher, KeyRecord, KeyStore, KeysError, Scope};
use wallet_shared::secret::Secret;
use wallet_shared::{ErrorCode, Rejection};

use crate::http::ApiError;

/// The keys this coordinator accepts, by id.
#[derive(Clone)]
pub struct Keys(Arc<Inner>);

struct Inner {
    hasher: KeyHasher,
    by_id: RwLock<HashMap<String, Arc<Entry>>>,
    /// The etcd revision the keys were read at.
    revision: Mutex<i64>,
}

struct Entry {
    record: KeyRecord,
    hash: Vec<u8>,
    caller: Caller,
    bucket: Option<Mutex<Bucket>>,
}

impl Keys {
    /// Keys that are exactly these records (the simulation's, tests').
    pub fn fixed(cluster: &Secret, records: Vec<KeyRecord>) -> Keys {
        let keys = Keys(Arc::new(Inner {
            hasher: KeyHasher::new(cluster),
            by_id: RwLock::new(HashMap::new()),
            revision: Mutex::new(0),
        }));
        keys.replace(records, 0);
        keys
    }

    /// Loads the keys from etcd and follows their changes in the
    /// background.
    pub async fn follow(cluster: &Secret, store: KeyStore) -> Result<Keys, KeysError> {
        let (records, revision) = store.load().await?;
        let keys = Keys::fixed(cluster, Vec::new());
        keys.replace(records, revision);
        tokio::spawn(keys.clone().watch_loop(store));
        Ok(keys)
    }

    /// How many usable (not revoked) keys there are.
    pub fn len(&self) -> usize {
        self.0.by_id.read().expect("keys lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Swaps in a new set of records. A key whose record did not change
    /// keeps its entry (and its bucket's tokens).
    fn replace(&self, records: Vec<KeyRecord>, revision: i64) {
        let old = self.0.by_id.read().expect("keys lock").clone();
        let mut next = HashMap::with_capacity(records.len());
        for record in records {
            if record.revoked_at.is_some() {
                continue;
            }
            if let Some(same) = old.get(&record.key_id).filter(|e| e.record == record) {
                next.insert(record.key_id.clone(), same.clone());
                continue;
            }
            let Some(hash) = unhex(&record.hash) else {
                tracing::warn!(key_id = %record.key_id, "key record has a malformed hash; ignored");
                continue;
            };
            let caller = Caller {
                key_id: record.key_id.as_str().into(),
                tenant: record.tenant.as_str().into(),
                admin: record.scopes.contains(&Scope::Admin),
                transfer: record.scopes.contains(&Scope::Transfer),
                read: record.scopes.contains(&Scope::Read),
            };
            let bucket = record.rate.map(|rate| Mutex::new(Bucket::full(rate)));
            next.insert(
                record.key_id.clone(),
                Arc::new(Entry {
                    record,
                    hash,
                    caller,
                    bucket,
                }),
            );
        }
        *self.0.by_id.write().expect("keys lock") = next;
        *self.0.revision.lock().expect("revision lock") = revision;
    }

    /// The caller a presented key stands for: 401 if it is missing,
    /// malformed, unknown, revoked or wrong; 429 past the key's rate.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<Caller, Refusal> {
        let key = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or(Refusal::Unauthenticated(
                "send an API key: Authorization: Bearer <key>",
            ))?;
        let unknown = Refusal::Unauthenticated("unknown or revoked API key");
        let key = ApiKey::parse(key).ok_or(unknown)?;
        let entry = self
            .0
            .by_id
            .read()
            .expect("keys lock")
            .get(&key.id)
            .cloned()
            .ok_or(unknown)?;
        if !self.0.hasher.verify(&key, &entry.hash) {
            return Err(unknown);
        }
        if let Some(bucket) = &entry.bucket {
            bucket
                .lock()
                .expect("bucket lock")
                .take(Instant::now())
                .map_err(Refusal::RateLimited)?;
        }
        Ok(entry.caller.clone())
    }

    async fn reload(&self, store: &KeyStore) {
        match store.load().await {
            Ok((records, revision)) => self.replace(records, revision),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API keys; keeping the ones known")
            }
        }
    }

    /// Watches the keys' prefix; reloads them all on any change (they are
    /// few), and every 5 s anyway, which covers what a broken watch missed.
    async fn watch_loop(self, store: KeyStore) {
        let mut backoff = wallet_shared::retry::Policy::background().backoff();
        loop {
            let from = *self.0.revision.lock().expect("revision lock") + 1;
            let mut client = store.client();
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            match client.watch(store.prefix(), Some(opts)).await {
                Ok(mut stream) => loop {
                    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                        Ok(Ok(Some(resp))) if !resp.events().is_empty() => {
                            self.reload(&store).await
                        }
                        Ok(Ok(Some(_))) => {}
                        Err(_) => self.reload(&store).await,
                        Ok(Ok(None)) | Ok(Err(_)) => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the API keys"),
            }
            self.reload(&store).await;
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))).await;
        }
    }
}

/// Why a request was turned away before any handler ran.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    Unauthenticated(&'static str),
    RateLimited(Duration),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthenticated(why) => {
                let mut r =
                    ApiError(Rejection::new(ErrorCode::Unauthenticated, why)).into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            }
            Refusal::RateLimited(wait) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut r = ApiError(Rejection::new(
                    ErrorCode::RateLimited,
                    format!("over this API key's rate; retry in {secs} s"),
                ))
                .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                r
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until there is one.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The key a request came with, checked: its tenant and scopes.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: Arc<str>,
    pub tenant: Arc<str>,
    admin: bool,
    transfer: bool,
    read: bool,
}

impl Caller {
    /// The `admin` scope: every account, the feed, resolve.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// 403 unless the key has `scope` (`admin` has them all).
    pub fn need(&self, scope: Scope) -> Result<(), Rejection> {
        let has = self.admin
            || match scope {
                Scope::Transfer => self.transfer,
                Scope::Read => self.read,
                Scope::Admin => false,
            };
        if has {
            Ok(())
        } else {
            Err(Rejection::new(
                ErrorCode::Forbidden,
                format!("this API key lacks the {} scope", scope.as_str()),
            ))
        }
    }

    /// The tenant whose accounts this caller may debit (and that owns what
    /// it opens and asks for); `None` for an admin, who may act on all.
    pub fn acting_for(&self) -> Option<String> {
        (!self.admin).then(|| self.tenant.to_string())
    }

    /// May it see what `owner` owns? (Its own tenant's, or anything for an
    /// admin.)
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(&*self.tenant)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Refusal> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(Refusal::Unauthenticated(
                "send an API key: Authorization: Bearer <key>",
            ))
    }
}

/// A [`Caller`] whose key has the scope `S` (see [`scope`]), checked
/// before the body is read: a key without the scope gets `403` whatever it
/// sent, even a body that would be `400`.
pub struct Needs<S>(pub Caller, pub std::marker::PhantomData<S>);

/// The scopes a handler can ask for with [`Needs`].
pub mod scope {
    use wallet_shared::auth::Scope;

    /// A scope as a type.
    pub trait Marker {
        const SCOPE: Scope;
    }
    /// Open accounts, deposit, withdraw, move money out of the tenant's own.
    pub struct Transfer;
    /// Balances, events and transfer status of the tenant's own accounts.
    pub struct Read;
    /// Every account, the global feed, resolve.
    pub struct Admin;
    impl Marker for Transfer {
        const SCOPE: Scope = Scope::Transfer;
    }
    impl Marker for Read {
        const SCOPE: Scope = Scope::Read;
    }
    impl Marker for Admin {
        const SCOPE: Scope = Scope::Admin;
    }
}

impl<M: scope::Marker, S: Send + Sync> FromRequestParts<S> for Needs<M> {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        caller
            .need(M::SCOPE)
            .map_err(|r| ApiError(r).into_response())?;
        Ok(Needs(caller, std::marker::PhantomData))
    }
}

/// The middleware in front of every `/v1/` and `/internal/v1/` route:
/// checks the key, hands the [`Caller`] to the handler, and logs every
/// request made with an admin key (one line: who, what, the answer).
pub async fn authenticate(State(keys): State<Keys>, mut req: Request, next: Next) -> Response {
    let caller = match keys.check(req.headers().get(header::AUTHORIZATION)) {
        Ok(caller) => caller,
        Err(refusal) => {
            metrics::counter!("wallet_auth_refused_total", "reason" => match refusal {
                Refusal::Unauthenticated(_) => "unauthenticated",
                Refusal::RateLimited(_) => "rate_limited",
            })
            .increment(1);
            return refusal.into_response();
        }
    };
    let admin = caller.is_admin().then(|| {
        (
            caller.key_id.clone(),
            caller.tenant.clone(),
            req.method().clone(),
            req.uri().path().to_string(),
        )
    });
    req.extensions_mut().insert(caller);
    let response = next.run(req).await;
    // After the handler, so the line carries what its span learnt (a
    // transfer's transaction_id) and the answer.
    if let Some((key_id, tenant, method, path)) = admin {
        tracing::info!(
            %key_id,
            %tenant,
            %method,
            %path,
            status = response.status().as_u16(),
            "admin action"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Secret {
        Secret::from_text("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn bearer(key: &ApiKey) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {}", key.reveal())).unwrap()
    }

    #[test]
    fn a_key_is_its_tenant_with_its_scopes_until_revoked() {
        let (key, mut record) =
            KeyRecord::create(&cluster(), "acme", vec![Scope::Read], None).unwrap();
        let keys = Keys::fixed(&cluster(), vec![record.clone()]);
        let caller = keys.check(Some(&bearer(&key))).unwrap();
        assert_eq!(&*caller.tenant, "acme");
        assert!(caller.need(Scope::Read).is_ok());
        assert_eq!(
            caller.need(Scope::Transfer).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(caller.may_see(Some("acme")) && !caller.may_see(Some("other")));
        assert_eq!(caller.acting_for().as_deref(), Some("acme"));

        for bad in [None, Some(HeaderValue::from_static("Bearer nope"))] {
            assert!(matches!(
                keys.check(bad.as_ref()),
                Err(Refusal::Unauthenticated(_))
            ));
        }
        let (stranger, _) = KeyRecord::create(&cluster(), "acme", vec![Scope::Read], None).unwrap();
        assert!(keys.check(Some(&bearer(&stranger))).is_err());

        record.revoked_at = Some(chrono::Utc::now());
        keys.replace(vec![record], 1);
        assert!(keys.check(Some(&bearer(&key))).is_err());
    }

    #[test]
    fn a_rated_key_is_refused_past_its_rate_and_served_again_later() {
        let (key, record) =
            KeyRecord::create(&cluster(), "acme", vec![Scope::Admin], Some(2)).unwrap();
        let keys = Keys::fixed(&cluster(), vec![record]);
        assert!(keys.check(Some(&bearer(&key))).unwrap().is_admin());
        assert!(keys.check(Some(&bearer(&key))).is_ok());
        let Err(Refusal::RateLimited(wait)) = keys.check(Some(&bearer(&key))) else {
            panic!("the third request in a moment is over a rate of 2/s");
        };
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        let mut b = Bucket::full(2);
        let t0 = Instant::now();
        assert!(b.take(t0).is_ok() && b.take(t0).is_ok() && b.take(t0).is_err());
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
    }
}
