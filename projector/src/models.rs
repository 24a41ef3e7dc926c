//! The read models in the projector's database, and how a page of feed
//! entries changes them.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use wallet_shared::protocol::{EventKind, FeedEntry, FeedKind};
use wallet_shared::retry;

/// The projector's database.
#[derive(Clone)]
pub struct Projections {
    pub pool: PgPool,
}

/// What one page changes: per-account, per-currency and per-rejection-key
/// sums of the entries' effects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deltas {
    pub accounts: BTreeMap<String, AccountDelta>,
    pub ledger: BTreeMap<String, LedgerDelta>,
    /// (transfers, amount) by (day, reason, currency).
    pub rejected: BTreeMap<RejectedKey, (i64, i64)>,
}

/// A row of `rejected_transfers`: (UTC day, reason code, currency).
pub type RejectedKey = (NaiveDate, String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDelta {
    pub currency: String,
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
    pub events: i64,
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerDelta {
    pub posted: i64,
    pub held: i64,
    pub pending_credit: i64,
    pub deposited: i64,
    pub withdrawn: i64,
    pub accounts: i64,
    pub events: i64,
}

impl Deltas {
    /// Sums the entries' effects (`EventKind::effect`, the fold every
    /// balance is). A page's sums fit in i64: every amount is an account's
    /// money, at most 10,000 entries.
    pub fn of(entries: &[FeedEntry]) -> Deltas {
        let mut d = Deltas::default();
        for e in entries {
            let currency = e.currency.code().to_string();
            match e.kind {
                FeedKind::Event(kind) => {
                    let (posted, held, pending) = kind.effect(e.amount);
                    let a = d
                        .accounts
                        .entry(e.account_id.as_str().to_string())
                        .or_insert_with(|| AccountDelta {
                            currency: currency.clone(),
                            posted: 0,
                            held: 0,
                            pending_credit: 0,
                            events: 0,
                            last_seq: 0,
                            last_activity_at: e.at,
                        });
                    a.posted += posted;
                    a.held += held;
                    a.pending_credit += pending;
                    a.events += 1;
                    a.last_seq = a.last_seq.max(e.seq.unwrap_or(0));
                    a.last_activity_at = a.last_activity_at.max(e.at);
                    let l = d.ledger.entry(currency).or_default();
                    l.posted += posted;
                    l.held += held;
                    l.pending_credit += pending;
                    l.events += 1;
                    match kind {
                        EventKind::Opened => l.accounts += 1,
                        EventKind::Deposited => l.deposited += e.amount,
                        EventKind::Withdrawn => l.withdrawn += e.amount,
                        _ => {}
                    }
                }
                FeedKind::TransferAborted => {
                    let reason = e.reason.map_or("unknown", |r| r.as_str()).to_string();
                    let r = d
                        .rejected
                        .entry((e.at.date_naive(), reason, currency))
                        .or_default();
                    r.0 += 1;
                    r.1 += e.amount;
                }
            }
        }
        d
    }
}

/// The model tables, in the order a rebuild empties and a dump reads them.
pub const TABLES: [&str; 4] = [
    "account_view",
    "ledger",
    "rejected_transfers",
    "feed_cursors",
];

/// A node's place in its feed, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Cursor {
    pub node_id: String,
    pub position: i64,
    pub head: i64,
    /// Entries published on the node and not projected yet.
    pub lag: i64,
    pub last_entry_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What [`Projections::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Projected; the cursor is now at this position.
    Moved(i64),
    /// The cursor was not where the page started (another projector or a
    /// rebuild moved it): nothing written; read again from the cursor.
    Stale,
}

impl Projections {
    /// Connects (retrying while Postgres starts) and applies the migrations.
    pub async fn connect(url: &str, statement_timeout: Duration) -> anyhow::Result<Self> {
        let timeout = format!("{}ms", statement_timeout.as_millis());
        let options: PgConnectOptions = url.parse()?;
        let options = options.options([
            ("statement_timeout", timeout.as_str()),
            ("lock_timeout", timeout.as_str()),
        ]);
        let pool = retry::with_backoff("connect to Postgres", retry::Policy::startup(), || {
            PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
        })
        .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Projections { pool })
    }

    /// Where the projection of `node` stands (0 if it never started).
    pub async fn position(&self, node: &str) -> sqlx::Result<i64> {
        let p: Option<i64> =
            sqlx::query_scalar("SELECT position FROM feed_cursors WHERE node_id = $1")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?;
        Ok(p.unwrap_or(0))
    }

    /// Projects `entries` (read from `node`'s feed after position `from`,
    /// whose head was `head`) and moves the cursor past them, in one
    /// transaction, if the cursor is still at `from`.
    pub async fn apply(
        &self,
        node: &str,
        from: i64,
        head: i64,
        entries: &[FeedEntry],
    ) -> sqlx::Result<Applied> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO feed_cursors (node_id, position) VALUES ($1, 0) ON CONFLICT DO NOTHING",
        )
        .bind(node)
        .execute(&mut *tx)
        .await?;
        let to = entries.last().map_or(from, |e| e.position);
        let last_at = entries.iter().map(|e| e.at).max();
        let moved = sqlx::query(
            "UPDATE feed_cursors SET position = $3, head = GREATEST($4, $3),
                    last_entry_at = COALESCE($5, last_entry_at), updated_at = now()
             WHERE node_id = $1 AND position = $2",
        )
        .bind(node)
        .bind(from)
        .bind(to)
        .bind(head)
        .bind(last_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(Applied::Stale);
        }
        let kept = uncovered(&mut tx, entries).await?;
        write_deltas(&mut tx, &Deltas::of(&kept)).await?;
        tx.commit().await?;
        Ok(Applied::Moved(to))
    }

    /// Empties every model, cursor and rebuild note in one transaction.
    pub async fn empty(&self) -> sqlx::Result<()> {
        sqlx::query(&format!(
            "TRUNCATE {}, rebuild_floors, rebuild_aborted",
            TABLES.join(", ")
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes the rebuild lock: pages of feed wait until it is released.
    pub async fn rebuild_lock(&self) -> sqlx::Result<RebuildLock> {
        let mut conn = self.pool.acquire().await?.detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut conn)
            .await?;
        Ok(RebuildLock(conn))
    }

    /// Puts `node`'s cursor at `position` (a rebuild's start).
    pub async fn start_at(&self, node: &str, position: i64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO feed_cursors (node_id, position, head) VALUES ($1, $2, $2)
             ON CONFLICT (node_id) DO UPDATE SET position = $2, updated_at = now()",
        )
        .bind(node)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Projects entries read from a node's history (in account and
    /// sequence order, or aborted transfers) and notes them as read, in one
    /// transaction; what an earlier page (of any node) read is skipped.
    pub async fn apply_history(&self, entries: &[FeedEntry]) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        let kept = uncovered(&mut tx, entries).await?;
        write_deltas(&mut tx, &Deltas::of(&kept)).await?;
        let mut floors: BTreeMap<&str, i64> = BTreeMap::new();
        let mut aborted = Vec::new();
        for e in &kept {
            match (e.kind, e.seq, e.transaction_id) {
                (FeedKind::Event(_), Some(seq), _) => {
                    let f = floors.entry(e.account_id.as_str()).or_default();
                    *f = (*f).max(seq);
                }
                (FeedKind::TransferAborted, _, Some(id)) => aborted.push(id.0),
                _ => {}
            }
        }
        sqlx::query(
            "INSERT INTO rebuild_floors AS f (account_id, seq)
             SELECT * FROM UNNEST($1::text[], $2::int8[])
             ON CONFLICT (account_id) DO UPDATE SET seq = GREATEST(f.seq, excluded.seq)",
        )
        .bind(floors.keys().copied().collect::<Vec<_>>())
        .bind(floors.values().copied().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO rebuild_aborted (transaction_id) SELECT * FROM UNNEST($1::uuid[])
             ON CONFLICT DO NOTHING",
        )
        .bind(&aborted)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn cursors(&self) -> sqlx::Result<Vec<Cursor>> {
        let rows = sqlx::query(
            "SELECT node_id, position, head, last_entry_at, updated_at FROM feed_cursors ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let position: i64 = r.try_get("position")?;
                let head: i64 = r.try_get("head")?;
                Ok(Cursor {
                    node_id: r.try_get("node_id")?,
                    position,
                    head,
                    lag: head - position,
                    last_entry_at: r.try_get("last_entry_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Every read-model row as text, table by table in key order (cursors
    /// left out): what a rebuild must reproduce exactly.
    pub async fn dump(&self) -> sqlx::Result<BTreeMap<&'static str, Vec<String>>> {
        let mut out = BTreeMap::new();
        for (table, key) in [
            ("account_view", "account_id"),
            ("ledger", "currency"),
            ("rejected_transfers", "day, reason, currency"),
        ] {
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT t::text FROM {table} t ORDER BY {key}"))
                    .fetch_all(&self.pool)
                    .await?;
            out.insert(table, rows);
        }
        Ok(out)
    }

    /// The ledger: per currency, (posted, deposited, withdrawn) in minor units.
    pub async fn ledger(&self) -> sqlx::Result<BTreeMap<String, LedgerRow>> {
        let rows = sqlx::query(
            "SELECT currency, posted::text, held::text, pending_credit::text, deposited::text,
                    withdrawn::text, accounts, events
             FROM ledger ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await?;
        let num = |r: &sqlx::postgres::PgRow, col: &str| -> sqlx::Result<i128> {
            let s: String = r.try_get(col)?;
            s.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
        };
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("currency")?,
                    LedgerRow {
                        posted: num(r, "posted")?,
                        held: num(r, "held")?,
                        pending_credit: num(r, "pending_credit")?,
                        deposited: num(r, "deposited")?,
                        withdrawn: num(r, "withdrawn")?,
                        accounts: r.try_get("accounts")?,
                        events: r.try_get("events")?,
                    },
                ))
            })
            .collect()
    }
}

/// The rebuild lock (`pg_advisory_lock`): held by a rebuild while it reads
/// the nodes' history; every page of feed projected takes it shared.
const REBUILD_LOCK: i64 = 0x7761_6c6c_6574_0002;

/// The rebuild lock, held on a connection of its own until released (or
/// the connection closes: it is detached from the pool).
pub struct RebuildLock(sqlx::PgConnection);

impl RebuildLock {
    pub async fn release(mut self) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut self.0)
            .await?;
        Ok(())
    }
}

/// Whether a rebuild already read this entry from a node's history:
/// an event at or below its account's floor, an aborted transfer noted.
pub fn covered(
    entry: &FeedEntry,
    floors: &BTreeMap<String, i64>,
    aborted: &std::collections::BTreeSet<uuid::Uuid>,
) -> bool {
    match entry.kind {
        FeedKind::Event(_) => match (entry.seq, floors.get(entry.account_id.as_str())) {
            (Some(seq), Some(&floor)) => seq <= floor,
            _ => false,
        },
        FeedKind::TransferAborted => entry
            .transaction_id
            .is_some_and(|id| aborted.contains(&id.0)),
    }
}

/// The entries a rebuild has not read already (see [`covered`]).
async fn uncovered(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    entries: &[FeedEntry],
) -> sqlx::Result<Vec<FeedEntry>> {
    let accounts: Vec<&str> = entries
        .iter()
        .filter(|e| matches!(e.kind, FeedKind::Event(_)))
        .map(|e| e.account_id.as_str())
        .collect();
    let ids: Vec<uuid::Uuid> = entries
        .iter()
        .filter(|e| e.kind == FeedKind::TransferAborted)
        .filter_map(|e| e.transaction_id.map(|t| t.0))
        .collect();
    let floors: BTreeMap<String, i64> =
        sqlx::query_as("SELECT account_id, seq FROM rebuild_floors WHERE account_id = ANY($1)")
            .bind(&accounts)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
    let aborted: std::collections::BTreeSet<uuid::Uuid> = sqlx::query_scalar(
        "SELECT transaction_id FROM rebuild_aborted WHERE transaction_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    Ok(entries
        .iter()
        .filter(|e| !covered(e, &floors, &aborted))
        .cloned()
        .collect())
}

/// Adds one page's sums to the models.
async fn write_deltas(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    d: &Deltas,
) -> sqlx::Result<()> {
    if !d.accounts.is_empty() {
        let a: Vec<(&String, &AccountDelta)> = d.accounts.iter().collect();
        sqlx::query(
            "INSERT INTO account_view AS v (account_id, currency, posted, held, pending_credit, events,
                                            last_seq, last_activity_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                                  $7::int8[], $8::timestamptz[])
             ON CONFLICT (account_id) DO UPDATE SET
                 posted = v.posted + excluded.posted,
                 held = v.held + excluded.held,
                 pending_credit = v.pending_credit + excluded.pending_credit,
                 events = v.events + excluded.events,
                 last_seq = GREATEST(v.last_seq, excluded.last_seq),
                 last_activity_at = GREATEST(v.last_activity_at, excluded.last_activity_at)",
        )
        .bind(a.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.currency.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.posted).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.held).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.pending_credit).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.events).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.last_seq).collect::<Vec<_>>())
        .bind(a.iter().map(|(_, x)| x.last_activity_at).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !d.ledger.is_empty() {
        let l: Vec<(&String, &LedgerDelta)> = d.ledger.iter().collect();
        sqlx::query(
            "INSERT INTO ledger AS g (currency, posted, held, pending_credit, deposited, withdrawn,
                                      accounts, events)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                                  $7::int8[], $8::int8[])
             ON CONFLICT (currency) DO UPDATE SET
                 posted = g.posted + excluded.posted,
                 held = g.held + excluded.held,
                 pending_credit = g.pending_credit + excluded.pending_credit,
                 deposited = g.deposited + excluded.deposited,
                 withdrawn = g.withdrawn + excluded.withdrawn,
                 accounts = g.accounts + excluded.accounts,
                 events = g.events + excluded.events",
        )
        .bind(l.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.posted).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.held).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.pending_credit).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.deposited).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.withdrawn).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.accounts).collect::<Vec<_>>())
        .bind(l.iter().map(|(_, x)| x.events).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !d.rejected.is_empty() {
        let r: Vec<(&RejectedKey, &(i64, i64))> = d.rejected.iter().collect();
        sqlx::query(
            "INSERT INTO rejected_transfers AS r (day, reason, currency, transfers, amount)
             SELECT * FROM UNNEST($1::date[], $2::text[], $3::text[], $4::int8[], $5::int8[])
             ON CONFLICT (day, reason, currency) DO UPDATE SET
                 transfers = r.transfers + excluded.transfers,
                 amount = r.amount + excluded.amount",
        )
        .bind(r.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
        .bind(r.iter().map(|(k, _)| k.1.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|(k, _)| k.2.as_str()).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, v)| v.0).collect::<Vec<_>>())
        .bind(r.iter().map(|(_, v)| v.1).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One currency of the ledger, in minor units (sums over every account may
/// exceed i64, hence i128).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    pub posted: i128,
    pub held: i128,
    pub pending_credit: i128,
    pub deposited: i128,
    pub withdrawn: i128,
    pub accounts: i64,
    pub events: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_shared::{AccountId, Currency, ErrorCode};

    fn entry(position: i64, kind: FeedKind, account: &str, amount: i64) -> FeedEntry {
        FeedEntry {
            position,
            kind,
            account_id: AccountId::parse(account).unwrap(),
            seq: matches!(kind, FeedKind::Event(_)).then_some(position),
            amount,
            currency: Currency::parse("USD").unwrap(),
            transaction_id: None,
            counterparty: None,
            reason: (kind == FeedKind::TransferAborted).then_some(ErrorCode::InsufficientFunds),
            partition: 0,
            at: DateTime::from_timestamp(1_700_000_000 + position, 0).unwrap(),
        }
    }

    #[test]
    fn a_page_sums_to_the_fold_and_splits_anywhere_to_the_same_sums() {
        let e = |p, k, a, n| entry(p, FeedKind::Event(k), a, n);
        let page = vec![
            e(1, EventKind::Opened, "a", 0),
            e(2, EventKind::Deposited, "a", 500),
            e(3, EventKind::DebitHeld, "a", 200),
            e(4, EventKind::DebitPosted, "a", 200),
            e(5, EventKind::CreditPending, "b", 200),
            e(6, EventKind::CreditPosted, "b", 200),
            e(7, EventKind::Withdrawn, "b", 50),
            entry(8, FeedKind::TransferAborted, "a", 999),
        ];
        let d = Deltas::of(&page);
        let usd = &d.ledger["USD"];
        assert_eq!((usd.posted, usd.held, usd.pending_credit), (450, 0, 0));
        assert_eq!((usd.deposited, usd.withdrawn, usd.accounts), (500, 50, 1));
        assert_eq!(d.accounts["a"].posted, 300);
        assert_eq!(d.accounts["b"].posted, 150);
        assert_eq!(d.accounts["b"].last_seq, 7);
        assert_eq!(d.rejected.values().copied().collect::<Vec<_>>(), [(1, 999)]);
        // Two pages sum to the same as one.
        let (x, y) = (Deltas::of(&page[..3]), Deltas::of(&page[3..]));
        assert_eq!(x.ledger["USD"].posted + y.ledger["USD"].posted, usd.posted);
    }

    /// What a rebuild read from the history is skipped in any node's feed:
    /// an account's events up to its floor, aborted transfers read.
    #[test]
    fn the_feed_skips_exactly_what_the_history_gave() {
        let floors: BTreeMap<String, i64> = [("a".to_string(), 5)].into();
        let id = uuid::Uuid::from_u128(9);
        let read: std::collections::BTreeSet<uuid::Uuid> = [id].into();
        let event =
            |account: &str, seq| entry(seq, FeedKind::Event(EventKind::Deposited), account, 1);
        assert!(covered(&event("a", 5), &floors, &read));
        assert!(!covered(&event("a", 6), &floors, &read));
        assert!(
            !covered(&event("b", 1), &floors, &read),
            "no floor: not read"
        );
        let mut aborted = entry(1, FeedKind::TransferAborted, "a", 1);
        assert!(!covered(&aborted, &floors, &read), "no id: never read");
        aborted.transaction_id = Some(wallet_shared::TransactionId(id));
        assert!(covered(&aborted, &floors, &read));
        aborted.transaction_id = Some(wallet_shared::TransactionId(uuid::Uuid::from_u128(10)));
        assert!(!covered(&aborted, &floors, &read));
    }
}
