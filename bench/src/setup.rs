//! Loading the benchmark's accounts straight into the participants'
//! databases: opening 100,000 accounts one by one through the API takes
//! minutes, three set-based statements per node take seconds.
//!
//! The rows are exactly what the participant itself writes when an account
//! is opened and then funded by a deposit (`participant/src/movements.rs`):
//! - `accounts`: the account's partition, currency, `posted` = the deposit,
//!   `last_seq` = 2;
//! - `events`: `opened` (seq 1, amount 0) and `deposited` (seq 2, with the
//!   deposit's transaction id);
//! - `legs`: the deposit, role `deposit`, state `committed`, with the
//!   fingerprint of [`Movement::fingerprint`];
//! - `transfers`, on the node that owns the deposit id's decision
//!   partition: its claim record (kind `deposit`, committed and complete),
//!   which makes the id one key across the cluster.
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
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use wallet_shared::protocol::{EventKind, Movement, MovementKind};
use wallet_shared::{AccountId, Amount, PartitionMap, TransactionId};

use super::generator::Target;
use super::scenario::Accounts;

/// How long loading one node's accounts may take.
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

/// One node's share of the accounts, as columns; and of the deposits'
/// claim records, by decision partition.
#[derive(Default)]
struct Columns {
    ids: Vec<String>,
    partitions: Vec<i32>,
    amounts: Vec<i64>,
    transactions: Vec<uuid::Uuid>,
    fingerprints: Vec<String>,
    claims: Claims,
}

#[derive(Default)]
struct Claims {
    transactions: Vec<uuid::Uuid>,
    partitions: Vec<i32>,
    fingerprints: Vec<String>,
    accounts: Vec<String>,
    amounts: Vec<i64>,
}

/// Writes every account of `accounts` into the database of the node that
/// owns its partition. Fails if any of them exists already.
pub async fn load(map: &PartitionMap, nodes: &[Node], accounts: &Accounts) -> Result<Loaded> {
    let started = Instant::now();
    let mut columns: BTreeMap<&str, Columns> = nodes
        .iter()
        .map(|n| (n.node_id.as_str(), Columns::default()))
        .collect();
    let mut deposits = BTreeMap::new();
    for (id, minor) in accounts.funded() {
        let account = AccountId::parse(id)?;
        let partition = map.account_partition(&account);
        let owner = map
            .owner(partition)
            .with_context(|| format!("partition {partition} has no owner in the map"))?;
        let Some(c) = columns.get_mut(owner.as_str()) else {
            bail!("partition {partition} belongs to {owner}, which is not among the nodes given");
        };
        let deposit = Movement {
            transaction_id: TransactionId::new_random(),
            kind: MovementKind::Deposit,
            account_id: account,
            partition,
            amount: Amount::from_minor(minor)?,
            currency: accounts.currency,
        };
        c.fingerprints.push(deposit.fingerprint());
        c.ids.push(id.to_string());
        c.partitions.push(partition as i32);
        c.amounts.push(minor);
        c.transactions.push(deposit.transaction_id.0);
        let home = map.decision_partition(deposit.transaction_id);
        let home_owner = map
            .owner(home)
            .with_context(|| format!("partition {home} has no owner in the map"))?;
        let Some(c) = columns.get_mut(home_owner.as_str()) else {
            bail!("partition {home} belongs to {home_owner}, which is not among the nodes given");
        };
        c.claims.transactions.push(deposit.transaction_id.0);
        c.claims.partitions.push(home as i32);
        c.claims.fingerprints.push(deposit.fingerprint());
        c.claims.accounts.push(id.to_string());
        c.claims.amounts.push(minor);
        deposits.insert(id.to_string(), deposit.transaction_id);
    }
    let currency = accounts.currency.code();
    let per_node = futures::future::try_join_all(nodes.iter().map(|node| {
        let c = &columns[node.node_id.as_str()];
        async move {
            tokio::time::timeout(LOAD_TIMEOUT, load_node(node, c, currency))
                .await
                .with_context(|| format!("loading {}: not done in {LOAD_TIMEOUT:?}", node.node_id))?
                .with_context(|| format!("loading accounts into {}", node.node_id))?;
            Ok::<_, anyhow::Error>((node.node_id.clone(), c.ids.len()))
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

async fn load_node(node: &Node, c: &Columns, currency: &str) -> Result<()> {
    let mut conn = connect(&node.database_url, LOAD_TIMEOUT).await?;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO accounts (account_id, partition, currency, posted, last_seq)
         SELECT id, p, $4, amount, 2 FROM UNNEST($1::text[], $2::int4[], $3::int8[]) AS t(id, p, amount)",
    )
    .bind(&c.ids)
    .bind(&c.partitions)
    .bind(&c.amounts)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .context("inserting accounts (do some exist already?)")?;
    sqlx::query(
        "INSERT INTO events (account_id, seq, kind, amount, transaction_id)
         SELECT id, 1, $4, 0, NULL::uuid FROM UNNEST($1::text[]) AS t(id)
         UNION ALL
         SELECT id, 2, $5, amount, tx FROM UNNEST($1::text[], $2::int8[], $3::uuid[]) AS t(id, amount, tx)",
    )
    .bind(&c.ids)
    .bind(&c.amounts)
    .bind(&c.transactions)
    .bind(EventKind::Opened.as_str())
    .bind(EventKind::Deposited.as_str())
    .execute(&mut *tx)
    .await
    .context("inserting events")?;
    // Role and state as the participant stores them (`RowRole::Deposit`,
    // `LegState::Committed` in participant/src/{model,pg}.rs).
    sqlx::query(
        "INSERT INTO legs (transaction_id, role, account_id, partition, amount, currency, fingerprint, state)
         SELECT tx, 'deposit', id, p, amount, $6, fp, 'committed'
         FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::uuid[], $5::text[]) AS t(id, p, amount, tx, fp)",
    )
    .bind(&c.ids)
    .bind(&c.partitions)
    .bind(&c.amounts)
    .bind(&c.transactions)
    .bind(&c.fingerprints)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .context("inserting deposit legs")?;
    // As `decisions::begin` and `decide` leave a deposit's claim.
    let k = &c.claims;
    sqlx::query(
        "INSERT INTO transfers (transaction_id, kind, partition, fingerprint, from_account, to_account,
                                amount, currency, state, lease_until, lease_owner, decided_at, completed)
         SELECT tx, 'deposit', p, fp, id, id, amount, $6, 'committed', now(), gen_random_uuid(), now(), true
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::int8[]) AS t(tx, p, fp, id, amount)",
    )
    .bind(&k.transactions)
    .bind(&k.partitions)
    .bind(&k.fingerprints)
    .bind(&k.accounts)
    .bind(&k.amounts)
    .bind(currency)
    .execute(&mut *tx)
    .await
    .context("inserting deposit claims")?;
    tx.commit().await?;
    sqlx::query("ANALYZE accounts, events, legs, transfers")
        .execute(&mut conn)
        .await?;
    Ok(())
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
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM legs WHERE state = 'prepared'
                 UNION ALL SELECT count(*) FROM accounts WHERE held > 0 OR pending_credit > 0
                 ORDER BY 1 DESC LIMIT 1",
            )
            .fetch_one(&mut *c)
            .await?;
            prepared += n;
        }
        if prepared == 0 || Instant::now() >= deadline {
            let mut posted = 0i64;
            for c in conns.iter_mut() {
                let p: i64 =
                    sqlx::query_scalar("SELECT COALESCE(sum(posted), 0)::int8 FROM accounts")
                        .fetch_one(&mut *c)
                        .await?;
                posted += p;
            }
            return Ok((posted, prepared));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
