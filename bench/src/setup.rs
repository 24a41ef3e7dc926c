//! Loading the benchmark's accounts straight into the participants'
//! databases: opening 100,000 accounts one by one through the API takes
//! minutes, a few set-based statements per node take seconds.
//!
//! Each account is opened and funded by a deposit, and the rows are the
//! participant's own: it writes them ([`participant::bulk`], beside its
//! schema), exactly as it does for an `open` and a `deposit`: the account,
//! its `opened` and `deposited` events, the committed deposit leg with its
//! fingerprint, and, on the node that owns the deposit id's decision
//! partition, its claim record (which makes the id one key across the
//! cluster).
//!
//! Partitions come from the partition map's own function and each account
//! goes to the database of the node that owns its partition, so the
//! participant finds it where it would have put it. [`verify`] then checks
//! a sample through the public API: balances, and a replay of the setup
//! deposit, which the participant accepts as the same deposit only if the
//! stored leg and fingerprint are what it would have written.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use participant::bulk::{self, Claim};
use participant::rows;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use wallet_shared::protocol::{Movement, MovementKind};
use wallet_shared::{AccountId, Amount, PartitionMap, TransactionId};

use super::generator::Target;
use super::scenario::Accounts;

/// How long loading one node's accounts may take.
/// The tenant whose accounts the benchmark loads and whose key (`transfer`,
/// `read`) moves their money: every transfer passes the ownership check
/// on the debit's node, as a real tenant's does.
pub const TENANT: &str = "bench";

const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long connecting to a database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A participant's node id and the URL of its database.
#[derive(Debug, Clone)]
pub struct Node {
    pub node_id: String,
    pub database_url: String,
}

/// What [`load`] wrote.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Accounts written per node id.
    pub per_node: BTreeMap<String, usize>,
    /// Transaction id of each account's setup deposit.
    pub deposits: BTreeMap<String, TransactionId>,
    pub elapsed: Duration,
}

/// Connects to a database with a statement timeout, itself bounded in time.
pub async fn connect(url: &str, statement_timeout: Duration) -> Result<PgConnection> {
    let timeout = format!("{}ms", statement_timeout.as_millis());
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("parsing {url}"))?
        .options([("statement_timeout", timeout.as_str())]);
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .with_context(|| format!("connecting to {url}: no answer in {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {url}"))
}

/// One node's share: the accounts it owns, each with its funding deposit,
/// and the deposits whose decision partition it owns.
#[derive(Default)]
struct Rows {
    deposits: Vec<Movement>,
    claims: Vec<Claim>,
}

/// Writes every account of `accounts` into the database of the node that
/// owns its partition. Fails if any of them exists already.
pub async fn load(map: &PartitionMap, nodes: &[Node], accounts: &Accounts) -> Result<Loaded> {
    let started = Instant::now();
    let mut rows: BTreeMap<&str, Rows> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), Rows::default()))
        .collect();
    let mut deposits = BTreeMap::new();
    for (id, minor) in accounts.funded() {
        let account = AccountId::parse(id)?;
        let partition = map.account_partition(&account);
        let owner = map
            .owner(partition)
            .with_context(|| format!("partition {partition} has no owner in the map"))?;
        let Some(r) = rows.get_mut(owner.as_str()) else {
            bail!("partition {partition} belongs to {owner}, which is not among the nodes given");
        };
        let deposit = Movement {
            transaction_id: TransactionId::new_random(),
            kind: MovementKind::Deposit,
            account_id: account,
            partition,
            amount: Amount::from_minor(minor)?,
            currency: accounts.currency,
            tenant: Some(TENANT.to_string()),
        };
        r.deposits.push(deposit.clone());
        let home = map.decision_partition(deposit.transaction_id);
        let home_owner = map
            .owner(home)
            .with_context(|| format!("partition {home} has no owner in the map"))?;
        let Some(r) = rows.get_mut(home_owner.as_str()) else {
            bail!("partition {home} belongs to {home_owner}, which is not among the nodes given");
        };
        deposits.insert(id.to_string(), deposit.transaction_id);
        r.claims.push(Claim {
            partition: home,
            deposit,
        });
    }
    let per_node = futures::future::try_join_all(nodes.iter().map(|node| {
        let r = &rows[node.node_id.as_str()];
        async move {
            tokio::time::timeout(LOAD_TIMEOUT, load_node(node, r))
                .await
                .with_context(|| format!("loading {}: not done in {LOAD_TIMEOUT:?}", node.node_id))?
                .with_context(|| format!("loading accounts into {}", node.node_id))?;
            Ok::<_, anyhow::Error>((node.node_id.clone(), r.deposits.len()))
        }
    }))
    .await?
    .into_iter()
    .collect();
    Ok(Loaded {
        per_node,
        deposits,
        elapsed: started.elapsed(),
    })
}

async fn load_node(node: &Node, rows: &Rows) -> Result<()> {
    let mut conn = connect(&node.database_url, LOAD_TIMEOUT).await?;
    bulk::load_funded_accounts(&mut conn, &rows.deposits, &rows.claims)
        .await
        .context("writing the accounts, events, legs and claims (do some exist already?)")
}

/// Checks `sample` random accounts and both hot ones through the API: the
/// balance (posted and available) is what was loaded; and, for a few, a
/// replay of the setup deposit is answered as that same deposit (200,
/// balance unchanged), which proves the stored leg is the participant's own.
pub async fn verify(
    target: &Target,
    accounts: &Accounts,
    loaded: &Loaded,
    sample: usize,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut chosen: Vec<(&str, i64)> = (0..sample.min(accounts.ids.len()))
        .map(|_| {
            (
                accounts.ids[rng.usize(..accounts.ids.len())].as_str(),
                accounts.initial,
            )
        })
        .collect();
    chosen.push((&accounts.hot_credit, accounts.initial));
    chosen.push((&accounts.hot_debit, accounts.hot_debit_initial));
    let replays = 5;
    for (i, (id, minor)) in chosen.iter().enumerate() {
        let want = accounts.currency.format(*minor);
        let check_balance = || async {
            let url = format!("{}/v1/wallet/accounts/{id}/balance", target.base);
            let resp = target.http.get(&url).send().await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await?;
            if !status.is_success() || body["balance"] != want || body["available"] != want {
                bail!("account {id}: expected balance {want}, the API says {status} {body}");
            }
            Ok(())
        };
        check_balance().await?;
        if i < replays {
            let deposit = loaded
                .deposits
                .get(*id)
                .with_context(|| format!("no setup deposit recorded for {id}"))?;
            let url = format!("{}/v1/wallet/accounts/{id}/deposit", target.base);
            let body = json!({"transaction_id": deposit.0, "amount": want, "currency": accounts.currency.code()});
            let resp = target.http.post(&url).json(&body).send().await?;
            let status = resp.status();
            if status != 200 {
                bail!(
                    "replaying the setup deposit of {id}: {status} {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            check_balance().await?;
        }
    }
    Ok(())
}

/// Waits (up to `within`) until no node has a leg still prepared, then
/// returns the sum of every account's posted balance and the number of legs
/// still prepared (0 unless it gave up waiting).
pub async fn settle(nodes: &[Node], within: Duration) -> Result<(i64, i64)> {
    let deadline = Instant::now() + within;
    let mut conns = Vec::new();
    for n in nodes {
        conns.push(connect(&n.database_url, Duration::from_secs(60)).await?);
    }
    loop {
        let mut prepared = 0i64;
        for c in conns.iter_mut() {
            prepared += rows::in_flight(c).await?;
        }
        if prepared == 0 || Instant::now() >= deadline {
            let mut posted = 0i64;
            for c in conns.iter_mut() {
                posted += rows::posted_total(c).await?;
            }
            return Ok((posted, prepared));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
