//! `walletctl audit` on one node: what can be checked at rest, set-based in
//! SQL over the partitions the node owns, in one read-only snapshot. A few
//! statements whatever the number of accounts; only what does not hold
//! (at most `limit` of each kind) and per-currency and per-bucket totals
//! come back, so walletctl can add them up over the nodes.
//!
//! The fold of an account's events is written in SQL from
//! [`EventKind::effect`], the same definition replay uses, so the two cannot
//! drift apart.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Row};
use wallet_shared::admin::{
    AuditRecord, AuditRequest, BucketTotals, CurrencyTotals, Finding, NodeAudit, StoredLeg, Tally,
};
use wallet_shared::protocol::{EventKind, TransferState};
use wallet_shared::{AccountId, Amount, Currency, TransactionId};

use crate::error::StoreError;
use crate::pg::{allow_long_reads, leg_from_row, LEG_COLUMNS};

/// `sum(CASE kind ...)` of one component of [`EventKind::effect`]:
/// 0 = posted, 1 = held, 2 = pending credit.
fn fold(component: usize) -> String {
    let arms: Vec<String> = EventKind::ALL
        .iter()
        .filter_map(|k| {
            let e = k.effect(1);
            let sign = [e.0, e.1, e.2][component];
            (sign != 0).then(|| format!("WHEN '{}' THEN {sign} * e.amount", k.as_str()))
        })
        .collect();
    format!("sum(CASE e.kind {} ELSE 0 END)", arms.join(" "))
}

/// The event kinds that post a leg's money, per role of the leg.
fn posting_role() -> String {
    use EventKind::*;
    let arms = [
        (DebitPosted, "debit"),
        (TransferredOut, "debit"),
        (CreditPosted, "credit"),
        (TransferredIn, "credit"),
        (Deposited, "deposit"),
        (Withdrawn, "withdrawal"),
    ]
    .iter()
    .map(|(k, role)| format!("WHEN '{}' THEN '{role}'", k.as_str()))
    .collect::<Vec<_>>()
    .join(" ");
    format!("CASE e.kind {arms} END")
}

struct Findings {
    list: Vec<Finding>,
    totals: BTreeMap<String, i64>,
}

impl Findings {
    fn add(
        &mut self,
        kind: &str,
        account: Option<String>,
        transaction: Option<uuid::Uuid>,
        detail: String,
    ) {
        *self.totals.entry(kind.to_string()).or_default() += 1;
        self.list.push(Finding {
            kind: kind.to_string(),
            node: None,
            account_id: account,
            transaction_id: transaction.map(TransactionId),
            detail,
        });
    }

    /// A query that found `total` rows but listed only `listed` (the
    /// limit): the rest count under `kind`.
    fn unlisted(&mut self, kind: &str, total: i64, listed: usize) {
        let more = total - listed as i64;
        if more > 0 {
            *self.totals.entry(kind.to_string()).or_default() += more;
        }
    }
}

fn currency(code: &str) -> Result<Currency, StoreError> {
    Currency::parse(code).map_err(StoreError::corrupt)
}

/// What one node's audit looks at: its partitions, how many findings of
/// each kind are listed, the caller's cutoff for "stuck", and the retention
/// horizon before which finished rows may have been pruned.
struct Scope {
    parts: Vec<i32>,
    limit: i64,
    cutoff: chrono::DateTime<chrono::Utc>,
    horizon: chrono::DateTime<chrono::Utc>,
}

/// `horizon`: rows finished before it may have been pruned
/// ([`crate::retention::audit_horizon`]); a leg and its posting, and a
/// decision and its legs, are judged only if one of them is newer.
pub async fn run(
    pool: &PgPool,
    req: &AuditRequest,
    horizon: chrono::DateTime<chrono::Utc>,
) -> Result<NodeAudit, StoreError> {
    let scope = Scope {
        parts: req.partitions.iter().map(|&p| p as i32).collect(),
        limit: req.limit.clamp(1, 10_000),
        cutoff: req.cutoff,
        horizon,
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    allow_long_reads(&mut tx).await?;
    let mut f = Findings {
        list: Vec::new(),
        totals: BTreeMap::new(),
    };
    let currencies = currency_totals(&mut tx, &scope).await?;
    let accounts = currencies.values().map(|c| c.accounts).sum();
    balances_replay(&mut tx, &scope, &mut f).await?;
    holds_are_legs(&mut tx, &scope, &mut f).await?;
    legs_posted_once(&mut tx, &scope, &mut f).await?;
    nothing_stuck(&mut tx, &scope, &mut f).await?;
    let buckets = bucket_totals(&mut tx, &scope).await?;
    let (records, legs) = bucket_rows(&mut tx, &scope, &req.detail_buckets).await?;
    tx.commit().await?;
    Ok(NodeAudit {
        node_id: String::new(),
        accounts,
        currencies,
        findings: f.list,
        totals: f.totals,
        buckets,
        records,
        legs,
        horizon: Some(horizon),
    })
}

/// Per currency: balances, and money in and out of the system.
async fn currency_totals(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<BTreeMap<Currency, CurrencyTotals>, StoreError> {
    let mut currencies: BTreeMap<Currency, CurrencyTotals> = BTreeMap::new();
    let rows = sqlx::query(
        "WITH b AS (SELECT currency, count(*) AS n, sum(posted) AS posted, sum(held) AS held,
                           sum(pending_credit) AS pending
                    FROM accounts WHERE partition = ANY($1) GROUP BY currency),
              m AS (SELECT a.currency,
                           sum(e.amount) FILTER (WHERE e.kind = 'deposited') AS deposited,
                           sum(e.amount) FILTER (WHERE e.kind = 'withdrawn') AS withdrawn
                    FROM events e JOIN accounts a USING (account_id)
                    WHERE a.partition = ANY($1) AND e.kind IN ('deposited', 'withdrawn')
                    GROUP BY a.currency)
         SELECT b.currency, b.n, b.posted::int8 AS posted, b.held::int8 AS held,
                b.pending::int8 AS pending, coalesce(m.deposited, 0)::int8 AS deposited,
                coalesce(m.withdrawn, 0)::int8 AS withdrawn
         FROM b LEFT JOIN m USING (currency)",
    )
    .bind(&scope.parts)
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        currencies.insert(
            currency(r.try_get("currency")?)?,
            CurrencyTotals {
                accounts: r.try_get("n")?,
                posted: r.try_get("posted")?,
                held: r.try_get("held")?,
                pending_credit: r.try_get("pending")?,
                deposited: r.try_get("deposited")?,
                withdrawn: r.try_get("withdrawn")?,
            },
        );
    }
    Ok(currencies)
}

/// Balances equal the fold of their events; the log has no gap; nothing
/// is negative.
async fn balances_replay(
    conn: &mut PgConnection,
    scope: &Scope,
    f: &mut Findings,
) -> Result<(), StoreError> {
    let sql = format!(
        "WITH f AS (SELECT e.account_id, {posted} AS posted, {held} AS held, {pending} AS pending,
                           count(*) AS n, min(e.seq) AS first, max(e.seq) AS last
                    FROM events e JOIN accounts a USING (account_id)
                    WHERE a.partition = ANY($1) GROUP BY e.account_id)
         SELECT a.account_id, a.currency, a.posted, a.held, a.pending_credit, a.last_seq,
                coalesce(f.posted, 0)::int8 AS f_posted, coalesce(f.held, 0)::int8 AS f_held,
                coalesce(f.pending, 0)::int8 AS f_pending, coalesce(f.n, 0) AS n,
                coalesce(f.first, 1) AS first, coalesce(f.last, 0) AS last,
                count(*) OVER () AS total
         FROM accounts a LEFT JOIN f USING (account_id)
         WHERE a.partition = ANY($1)
           AND (a.posted <> coalesce(f.posted, 0) OR a.held <> coalesce(f.held, 0)
             OR a.pending_credit <> coalesce(f.pending, 0) OR a.last_seq <> coalesce(f.last, 0)
             OR coalesce(f.n, 0) <> coalesce(f.last, 0) OR coalesce(f.first, 1) <> 1
             OR a.posted < 0 OR a.held < 0 OR a.held > a.posted OR a.pending_credit < 0)
         ORDER BY a.account_id LIMIT $2",
        posted = fold(0),
        held = fold(1),
        pending = fold(2),
    );
    let (mut total, mut listed) = (0, 0);
    for r in sqlx::query(&sql)
        .bind(&scope.parts)
        .bind(scope.limit)
        .fetch_all(&mut *conn)
        .await?
    {
        let c = currency(r.try_get("currency")?)?;
        let account: String = r.try_get("account_id")?;
        let (posted, held, pending): (i64, i64, i64) = (
            r.try_get("posted")?,
            r.try_get("held")?,
            r.try_get("pending_credit")?,
        );
        let folded: (i64, i64, i64) = (
            r.try_get("f_posted")?,
            r.try_get("f_held")?,
            r.try_get("f_pending")?,
        );
        let (last_seq, n, last): (i64, i64, i64) =
            (r.try_get("last_seq")?, r.try_get("n")?, r.try_get("last")?);
        total = r.try_get("total")?;
        listed += 1;
        let money = |(p, h, q): (i64, i64, i64)| {
            format!(
                "posted {}, held {}, pending credit {} {c}",
                c.format(p),
                c.format(h),
                c.format(q)
            )
        };
        let (kind, detail) = if posted < 0 || held < 0 || held > posted || pending < 0 {
            (
                "negative_balance",
                format!("stored {}", money((posted, held, pending))),
            )
        } else if (posted, held, pending) != folded {
            (
                "replay_mismatch",
                format!(
                    "stored {}; its {n} events fold to {}",
                    money((posted, held, pending)),
                    money(folded)
                ),
            )
        } else {
            (
                "replay_mismatch",
                format!("last_seq {last_seq}, but {n} events end at seq {last} (a gap)"),
            )
        };
        f.add(kind, Some(account), None, detail);
    }
    f.unlisted("replay_mismatch", total, listed);
    Ok(())
}

/// Every hold and pending credit is a prepared leg, and every prepared
/// leg is held: no orphaned hold.
async fn holds_are_legs(
    conn: &mut PgConnection,
    scope: &Scope,
    f: &mut Findings,
) -> Result<(), StoreError> {
    let (mut total, mut listed) = (0, 0);
    for r in sqlx::query(
        "WITH l AS (SELECT account_id,
                           sum(amount) FILTER (WHERE role = 'debit') AS held,
                           sum(amount) FILTER (WHERE role = 'credit') AS pending
                    FROM legs WHERE state = 'prepared' AND partition = ANY($1)
                    GROUP BY account_id)
         SELECT a.account_id, a.currency, a.held, a.pending_credit,
                coalesce(l.held, 0)::int8 AS l_held, coalesce(l.pending, 0)::int8 AS l_pending,
                count(*) OVER () AS total
         FROM accounts a LEFT JOIN l USING (account_id)
         WHERE a.partition = ANY($1)
           AND (a.held <> coalesce(l.held, 0) OR a.pending_credit <> coalesce(l.pending, 0))
         ORDER BY a.account_id LIMIT $2",
    )
    .bind(&scope.parts)
    .bind(scope.limit)
    .fetch_all(&mut *conn)
    .await?
    {
        let c = currency(r.try_get("currency")?)?;
        let v = |col: &str| -> Result<String, StoreError> { Ok(c.format(r.try_get(col)?)) };
        let detail = format!(
            "held {} and pending credit {} {c}, but its prepared legs add up to {} and {}",
            v("held")?,
            v("pending_credit")?,
            v("l_held")?,
            v("l_pending")?
        );
        total = r.try_get("total")?;
        listed += 1;
        f.add(
            "hold_mismatch",
            Some(r.try_get("account_id")?),
            None,
            detail,
        );
    }
    f.unlisted("hold_mismatch", total, listed);
    Ok(())
}

/// A committed leg posted its money exactly once; any other leg not at
/// all; and no money was posted without a leg. A pair whose leg (if
/// any) finished and whose money (if any) was posted before the horizon
/// is not judged: its leg may have been pruned (a leg's money is posted
/// in the transaction that finishes it).
async fn legs_posted_once(
    conn: &mut PgConnection,
    scope: &Scope,
    f: &mut Findings,
) -> Result<(), StoreError> {
    let (mut total, mut listed) = (0, 0);
    let sql = format!(
        "WITH l AS (SELECT transaction_id, role, account_id, state, updated_at FROM legs
                    WHERE partition = ANY($1)),
              p AS (SELECT e.transaction_id, e.account_id, {role} AS role, count(*) AS n,
                           max(e.at) AS at
                    FROM events e JOIN accounts a USING (account_id)
                    WHERE a.partition = ANY($1) AND e.transaction_id IS NOT NULL
                      AND {role} IS NOT NULL
                    GROUP BY 1, 2, 3)
         SELECT coalesce(l.transaction_id, p.transaction_id) AS transaction_id,
                coalesce(l.role, p.role) AS role, coalesce(l.account_id, p.account_id) AS account_id,
                l.state, coalesce(p.n, 0) AS n, count(*) OVER () AS total
         FROM l FULL JOIN p USING (transaction_id, role, account_id)
         WHERE CASE WHEN l.state = 'committed' THEN coalesce(p.n, 0) <> 1
                    ELSE coalesce(p.n, 0) <> 0 END
           AND NOT (coalesce(l.updated_at < $3, true) AND coalesce(p.at < $3, true))
         ORDER BY 1, 2 LIMIT $2",
        role = posting_role(),
    );
    for r in sqlx::query(&sql)
        .bind(&scope.parts)
        .bind(scope.limit)
        .bind(scope.horizon)
        .fetch_all(&mut *conn)
        .await?
    {
        let role: String = r.try_get("role")?;
        let state: Option<String> = r.try_get("state")?;
        let n: i64 = r.try_get("n")?;
        let detail = match state {
            Some(state) => format!("{role} leg is {state}, but its money was posted {n} times"),
            None => format!("money posted {n} times as a {role}, with no {role} leg stored"),
        };
        total = r.try_get("total")?;
        listed += 1;
        f.add(
            "leg_posting_mismatch",
            Some(r.try_get("account_id")?),
            Some(r.try_get("transaction_id")?),
            detail,
        );
    }
    f.unlisted("leg_posting_mismatch", total, listed);
    Ok(())
}

/// Nothing unfinished for longer than the caller allows.
async fn nothing_stuck(
    conn: &mut PgConnection,
    scope: &Scope,
    f: &mut Findings,
) -> Result<(), StoreError> {
    let (mut total, mut listed) = (0, 0);
    for r in sqlx::query(
        "SELECT transaction_id, state, created_at, decided_at, count(*) OVER () AS total
         FROM transfers
         WHERE NOT completed AND partition = ANY($1)
           AND ((state = 'preparing' AND created_at < $2) OR (state <> 'preparing' AND decided_at < $2))
         ORDER BY created_at LIMIT $3",
    )
    .bind(&scope.parts)
    .bind(scope.cutoff)
    .bind(scope.limit)
    .fetch_all(&mut *conn)
    .await?
    {
        let state: String = r.try_get("state")?;
        let created: chrono::DateTime<chrono::Utc> = r.try_get("created_at")?;
        let detail = if state == "preparing" {
            format!("undecided since {created}")
        } else {
            let decided: Option<chrono::DateTime<chrono::Utc>> = r.try_get("decided_at")?;
            format!(
                "{state} at {}, but not every leg has applied it",
                decided.map_or("?".into(), |d| d.to_string())
            )
        };
        total = r.try_get("total")?;
        listed += 1;
        f.add(
            "stuck_transfer",
            None,
            Some(r.try_get("transaction_id")?),
            detail,
        );
    }
    f.unlisted("stuck_transfer", total, listed);
    (total, listed) = (0, 0);
    for r in sqlx::query(
        "SELECT transaction_id, role, account_id, amount, currency, created_at,
                count(*) OVER () AS total
         FROM legs
         WHERE state = 'prepared' AND partition = ANY($1) AND created_at < $2
         ORDER BY created_at LIMIT $3",
    )
    .bind(&scope.parts)
    .bind(scope.cutoff)
    .bind(scope.limit)
    .fetch_all(&mut *conn)
    .await?
    {
        let c = currency(r.try_get("currency")?)?;
        let role: String = r.try_get("role")?;
        let created: chrono::DateTime<chrono::Utc> = r.try_get("created_at")?;
        let detail = format!(
            "{role} leg of {} {c} prepared since {created}",
            c.format(r.try_get("amount")?)
        );
        total = r.try_get("total")?;
        listed += 1;
        f.add(
            "stuck_leg",
            Some(r.try_get("account_id")?),
            Some(r.try_get("transaction_id")?),
            detail,
        );
    }
    f.unlisted("stuck_leg", total, listed);
    Ok(())
}

/// Per bucket of transaction ids: committed decisions, and committed
/// transfer legs, settled before the cutoff and (as they may have been
/// pruned) after the horizon. walletctl adds them up over the nodes: a
/// committed transfer has one debit and one credit of its amount, an
/// aborted one none. (A transfer decided before the horizon and applied
/// after it makes its bucket differ; walletctl's by-transaction pass
/// does not judge it.)
async fn bucket_totals(
    conn: &mut PgConnection,
    scope: &Scope,
) -> Result<BTreeMap<u8, BucketTotals>, StoreError> {
    let mut buckets: BTreeMap<u8, BucketTotals> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT get_byte(uuid_send(transaction_id), 0) AS b, count(*) AS n,
                sum(amount)::int8 AS amount
         FROM transfers
         WHERE partition = ANY($1) AND kind = 'transfer' AND state = 'committed' AND decided_at < $2
           AND decided_at >= $3
         GROUP BY 1",
    )
    .bind(&scope.parts)
    .bind(scope.cutoff)
    .bind(scope.horizon)
    .fetch_all(&mut *conn)
    .await?
    {
        buckets
            .entry(r.try_get::<i32, _>("b")? as u8)
            .or_default()
            .committed = Tally {
            count: r.try_get("n")?,
            amount: r.try_get("amount")?,
        };
    }
    for r in sqlx::query(
        "SELECT get_byte(uuid_send(transaction_id), 0) AS b, role, count(*) AS n,
                sum(amount)::int8 AS amount
         FROM legs
         WHERE partition = ANY($1) AND state = 'committed' AND role IN ('debit', 'credit')
           AND updated_at < $2 AND updated_at >= $3
         GROUP BY 1, 2",
    )
    .bind(&scope.parts)
    .bind(scope.cutoff)
    .bind(scope.horizon)
    .fetch_all(&mut *conn)
    .await?
    {
        let tally = Tally {
            count: r.try_get("n")?,
            amount: r.try_get("amount")?,
        };
        let bucket = buckets.entry(r.try_get::<i32, _>("b")? as u8).or_default();
        if r.try_get::<String, _>("role")? == "debit" {
            bucket.debits = tally;
        } else {
            bucket.credits = tally;
        }
    }
    Ok(buckets)
}

/// The buckets walletctl asks about, row by row.
async fn bucket_rows(
    conn: &mut PgConnection,
    scope: &Scope,
    wanted_buckets: &[u8],
) -> Result<(Vec<AuditRecord>, Vec<StoredLeg>), StoreError> {
    let mut records = Vec::new();
    let mut legs = Vec::new();
    if !wanted_buckets.is_empty() {
        let wanted: Vec<i32> = wanted_buckets.iter().map(|&b| b as i32).collect();
        for r in sqlx::query(
            "SELECT transaction_id, state, from_account, to_account, amount, currency, decided_at
             FROM transfers
             WHERE partition = ANY($1) AND kind = 'transfer'
               AND get_byte(uuid_send(transaction_id), 0) = ANY($2)",
        )
        .bind(&scope.parts)
        .bind(&wanted)
        .fetch_all(&mut *conn)
        .await?
        {
            let state = match r.try_get::<String, _>("state")?.as_str() {
                "committed" => TransferState::Committed,
                "aborted" => TransferState::Aborted,
                _ => TransferState::Preparing,
            };
            let account = |col: &str| -> Result<AccountId, StoreError> {
                AccountId::parse(r.try_get::<String, _>(col)?).map_err(StoreError::corrupt)
            };
            let amount: i64 = r.try_get("amount")?;
            Amount::from_minor(amount).map_err(StoreError::corrupt)?;
            records.push(AuditRecord {
                transaction_id: TransactionId(r.try_get("transaction_id")?),
                state,
                from: account("from_account")?,
                to: account("to_account")?,
                amount,
                currency: currency(r.try_get("currency")?)?,
                decided_at: r.try_get("decided_at")?,
            });
        }
        let sql = format!(
            "SELECT {LEG_COLUMNS} FROM legs
             WHERE partition = ANY($1) AND role IN ('debit', 'credit')
               AND get_byte(uuid_send(transaction_id), 0) = ANY($2)"
        );
        for r in sqlx::query(&sql)
            .bind(&scope.parts)
            .bind(&wanted)
            .fetch_all(&mut *conn)
            .await?
        {
            legs.push(crate::legs::as_stored(&leg_from_row(&r)?));
        }
    }
    Ok((records, legs))
}
