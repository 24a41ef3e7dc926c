//! The clients: concurrent loops, each sending one request at a time to a
//! coordinator picked at random, over few accounts on every node so they
//! contend and try to overdraw: transfers (a few across currencies, which
//! must be refused), deposits, withdrawals, balance reads, and retries of
//! earlier requests with the same transaction id and body (preferring those
//! whose outcome the client does not know yet). Every request becomes an
//! [`Op`] in the history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use uuid::Uuid;
use wallet_shared::{AccountId, Currency, PartitionMap};

pub use wallet_history::history::classify;

use super::history::{Clock, Op, Outcome, Phase, Request};
use super::Until;

/// How many earlier requests clients may pick a retry from.
const RECENT: usize = 512;

/// An account the workload uses.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its id.
    pub id: String,
    /// Its currency.
    pub currency: Currency,
}

/// A fresh random (version 4) transaction id drawn from `rng`, so that a
/// seed gives the same ids.
pub fn new_transaction_id(rng: &mut fastrand::Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid()
}

/// `n` account ids of the form `{prefix}-{i}` that live on `node`.
pub fn accounts_on(map: &PartitionMap, node: &str, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|a| {
            AccountId::parse(a.as_str()).is_ok_and(|id| {
                map.owner(map.account_partition(&id)).map(String::as_str) == Some(node)
            })
        })
        .take(n)
        .collect()
}

/// `per_node` accounts in each currency on each node of the map.
pub fn place_accounts(map: &PartitionMap, per_node: &[(Currency, usize)]) -> Vec<Account> {
    let mut accounts = Vec::new();
    for (currency, n) in per_node {
        for node in map.nodes.keys() {
            let prefix = format!("chaos-{}-{node}", currency.code().to_lowercase());
            accounts.extend(
                accounts_on(map, node, &prefix, *n)
                    .into_iter()
                    .map(|id| Account {
                        id,
                        currency: *currency,
                    }),
            );
        }
    }
    accounts
}

/// The public API of every coordinator, as the history sees it.
#[derive(Clone)]
pub struct Client {
    /// One pool of connections for all coordinators.
    http: reqwest::Client,
    /// Base URLs, by coordinator index.
    coordinators: Arc<Vec<String>>,
    /// Timestamps for the history.
    clock: Clock,
}

impl Client {
    /// A client of `coordinators`, every request with the API key
    /// `api_key`; a request without an answer after `timeout` counts as
    /// unknown.
    pub fn new(
        coordinators: Vec<String>,
        api_key: &str,
        clock: Clock,
        timeout: Duration,
    ) -> Result<Client> {
        let http = reqwest::Client::builder()
            .default_headers(devcluster::bearer(api_key))
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(1))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            coordinators: Arc::new(coordinators),
            clock,
        })
    }

    /// The clock of its history.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// How many coordinators there are.
    pub fn coordinators(&self) -> usize {
        self.coordinators.len()
    }

    /// Sends `request` to coordinator `coordinator` and records what happened.
    pub async fn call(
        &self,
        process: usize,
        phase: Phase,
        coordinator: usize,
        request: Request,
        retry: bool,
    ) -> Op {
        let invoke_ms = self.clock.now_ms();
        let sent = self
            .build(&self.coordinators[coordinator], &request)
            .send()
            .await;
        let (outcome, status, body, error) = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(text) => {
                        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                        (classify(&request, status, &body), Some(status), body, None)
                    }
                    Err(e) => (
                        Outcome::Unknown,
                        Some(status),
                        Value::Null,
                        Some(e.to_string()),
                    ),
                }
            }
            // Connection refused: the request never left, nothing happened.
            Err(e) if e.is_connect() => (Outcome::Fail, None, Value::Null, Some(error_chain(&e))),
            Err(e) => (Outcome::Unknown, None, Value::Null, Some(error_chain(&e))),
        };
        Op {
            process,
            phase,
            request,
            retry,
            coordinator,
            invoke_ms,
            complete_ms: self.clock.now_ms(),
            outcome,
            status,
            body,
            error,
        }
    }

    fn build(&self, base: &str, request: &Request) -> reqwest::RequestBuilder {
        let call = request.http();
        let url = format!("{base}{}", call.path);
        let builder = match call.method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        match &call.body {
            Some(body) => builder.json(body),
            None => builder,
        }
    }
}

/// The error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Earlier requests, for retries.
#[derive(Default)]
struct Earlier {
    /// The last [`RECENT`] transfers, deposits and withdrawals sent.
    recent: VecDeque<Request>,
    /// Those whose last answer was unknown, not retried since.
    unknown: Vec<Request>,
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Mix {
    /// Percent of new transfers.
    pub transfer: u32,
    /// Percent of deposits.
    pub deposit: u32,
    /// Percent of withdrawals.
    pub withdraw: u32,
    /// Percent of balance reads.
    pub read: u32,
    /// Percent of retries of earlier requests (the rest of 100).
    pub retry: u32,
    /// Percent of transfers to an account of any currency (most must be
    /// refused as `currency_mismatch`).
    pub cross_currency: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            transfer: 70,
            deposit: 6,
            withdraw: 4,
            read: 10,
            retry: 10,
            cross_currency: 3,
        }
    }
}

/// The workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The accounts, opened and funded.
    pub accounts: Vec<Account>,
    /// Minor units each account was funded with; transfers and withdrawals
    /// take up to 60% of it, deposits add up to 30%.
    pub initial: i64,
    /// What the clients do.
    pub mix: Mix,
}

impl Workload {
    /// Runs `clients` loops until `until` (a request in flight then is
    /// finished) and returns what they did.
    pub async fn run(&self, client: &Client, clients: usize, seed: u64, until: &Until) -> Vec<Op> {
        let earlier = Mutex::new(Earlier::default());
        let loops = (0..clients).map(|process| {
            let earlier = &earlier;
            async move {
                let mut rng = fastrand::Rng::with_seed(
                    seed ^ (process as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let mut ops = Vec::new();
                // A request that never left: sent again at once to another
                // coordinator, as a load balancer would.
                let mut not_sent: Option<(Request, usize)> = None;
                while !until.reached() {
                    let (request, retry, coordinator) = match not_sent.take() {
                        Some((request, dead)) => {
                            let n = client.coordinators();
                            (request, true, (dead + 1 + rng.usize(..n.max(2) - 1)) % n)
                        }
                        None => {
                            let (request, retry) = self.next(&mut rng, earlier);
                            (request, retry, rng.usize(..client.coordinators()))
                        }
                    };
                    if !retry && matches!(request, Request::Transfer { .. }) {
                        until.transfer_sent();
                    }
                    let op = client
                        .call(process, Phase::Chaos, coordinator, request, retry)
                        .await;
                    if op.outcome == Outcome::Fail && op.status.is_none() {
                        not_sent = Some((op.request.clone(), coordinator));
                        // Not in a tight loop while every coordinator is down.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if op.request.is_mutation() {
                        let mut earlier = earlier.lock().unwrap_or_else(|p| p.into_inner());
                        if !retry {
                            if earlier.recent.len() == RECENT {
                                earlier.recent.pop_front();
                            }
                            earlier.recent.push_back(op.request.clone());
                        }
                        if op.outcome == Outcome::Unknown {
                            earlier.unknown.push(op.request.clone());
                        }
                    }
                    ops.push(op);
                }
                ops
            }
        });
        futures::future::join_all(loops)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The next request, and whether it is a retry.
    fn next(&self, rng: &mut fastrand::Rng, earlier: &Mutex<Earlier>) -> (Request, bool) {
        let mix = &self.mix;
        let roll = rng.u32(..100);
        let account = |rng: &mut fastrand::Rng| &self.accounts[rng.usize(..self.accounts.len())];
        if roll < mix.transfer {
            return (self.transfer(rng), false);
        }
        let roll = roll - mix.transfer;
        if roll < mix.deposit {
            let a = account(rng);
            let request = Request::Deposit {
                transaction_id: new_transaction_id(rng),
                account: a.id.clone(),
                amount: rng.i64(1..=self.initial * 3 / 10),
                currency: a.currency.code().into(),
            };
            return (request, false);
        }
        let roll = roll - mix.deposit;
        if roll < mix.withdraw {
            let a = account(rng);
            let request = Request::Withdraw {
                transaction_id: new_transaction_id(rng),
                account: a.id.clone(),
                amount: rng.i64(1..=self.initial * 6 / 10),
                currency: a.currency.code().into(),
            };
            return (request, false);
        }
        let roll = roll - mix.withdraw;
        if roll < mix.read {
            let account = account(rng).id.clone();
            return (Request::Read { account }, false);
        }
        let again = {
            let mut earlier = earlier.lock().unwrap_or_else(|p| p.into_inner());
            if !earlier.unknown.is_empty() && rng.bool() {
                let i = rng.usize(..earlier.unknown.len());
                Some(earlier.unknown.swap_remove(i))
            } else if earlier.recent.is_empty() {
                None
            } else {
                Some(earlier.recent[rng.usize(..earlier.recent.len())].clone())
            }
        };
        match again {
            Some(request) => (request, true),
            None => (self.transfer(rng), false),
        }
    }

    fn transfer(&self, rng: &mut fastrand::Rng) -> Request {
        let transaction_id = new_transaction_id(rng);
        let from = &self.accounts[rng.usize(..self.accounts.len())];
        let any_currency = rng.u32(..100) < self.mix.cross_currency;
        let candidates: Vec<&Account> = self
            .accounts
            .iter()
            .filter(|a| a.id != from.id && (any_currency || a.currency == from.currency))
            .collect();
        let to = candidates[rng.usize(..candidates.len())];
        Request::Transfer {
            transaction_id,
            from: from.id.clone(),
            to: to.id.clone(),
            amount: rng.i64(1..=self.initial * 6 / 10),
            currency: from.currency.code().into(),
        }
    }
}
