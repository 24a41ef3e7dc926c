//! `walletctl audit`: the promises that can be checked at rest, over every
//! node, counting only the partitions each node owns in the current map (a
//! copy left on a previous owner after a move does not count).
//!
//! Each node checks its own rows set-based in SQL (balances equal the fold
//! of their events, no gap, nothing negative, holds backed by prepared legs,
//! every leg posted once or not at all, nothing stuck past `--older-than`)
//! and returns totals. Here the totals are added up: money is conserved per
//! currency, and per bucket of transaction ids the committed decisions match
//! the committed debits and credits. A bucket that does not match is then
//! listed transaction by transaction to name the culprit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use wallet_shared::admin::{
    AuditRecord, AuditRequest, BucketTotals, CurrencyTotals, Finding, NodeAudit, StoredLeg,
};
use wallet_shared::protocol::{LegState, TransferState};
use wallet_shared::{routes, Currency, PartitionMap, TransactionId};

use crate::ctx::Ctx;
use crate::error::{usage, CtlError, CtlResult, Exit};
use crate::output::Table;

/// One node's audit may take this long (100,000 accounts take seconds).
const NODE_TIMEOUT: Duration = Duration::from_secs(300);
/// Buckets listed row by row in the second pass, at most.
const MAX_DETAIL_BUCKETS: usize = 32;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Seconds after which an unfinished transfer, a prepared leg or a hold
    /// counts as stuck; anything that changed more recently is in flight and
    /// left out of the transfer checks
    #[arg(long, default_value_t = 60)]
    older_than: u64,
    /// At most this many findings of each kind per node
    #[arg(long, default_value_t = 100)]
    limit: i64,
}

#[derive(Debug, Serialize)]
struct NodeSummary {
    node: String,
    partitions: usize,
    accounts: i64,
    millis: u128,
}

#[derive(Debug, Serialize)]
struct CurrencySummary {
    accounts: i64,
    balances: String,
    deposited: String,
    withdrawn: String,
    held: String,
    pending_credit: String,
}

#[derive(Debug, Serialize)]
struct Report {
    clean: bool,
    cutoff: DateTime<Utc>,
    nodes: Vec<NodeSummary>,
    currencies: BTreeMap<String, CurrencySummary>,
    findings: Vec<Finding>,
    /// Findings of each kind, before the per-node limit cut the list.
    totals: BTreeMap<String, i64>,
}

pub async fn run(ctx: &Ctx, args: AuditArgs) -> CtlResult<()> {
    if !(1..=10_000).contains(&args.limit) {
        return Err(usage("--limit must be between 1 and 10000"));
    }
    let map = ctx.map().await?;
    let cutoff =
        Utc::now() - chrono::Duration::seconds(args.older_than.min(i64::MAX as u64) as i64);
    let mut request = AuditRequest {
        partitions: Vec::new(),
        cutoff,
        limit: args.limit,
        detail_buckets: Vec::new(),
    };

    let mut audits = Vec::new();
    let mut nodes = Vec::new();
    let owning: Vec<&String> = map
        .nodes
        .keys()
        .filter(|n| !map.partitions_of(n).is_empty())
        .collect();
    for (i, node) in owning.iter().enumerate() {
        request.partitions = map.partitions_of(node);
        ctx.output.note(format!(
            "[{}/{}] auditing {node} ({} partitions)...",
            i + 1,
            owning.len(),
            request.partitions.len()
        ));
        let started = Instant::now();
        let audit = ask(ctx, &map, node, &request).await?;
        nodes.push(NodeSummary {
            node: node.to_string(),
            partitions: request.partitions.len(),
            accounts: audit.accounts,
            millis: started.elapsed().as_millis(),
        });
        audits.push(audit);
    }

    let mut findings: Vec<Finding> = Vec::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut money: BTreeMap<Currency, CurrencyTotals> = BTreeMap::new();
    let mut buckets: BTreeMap<u8, BucketTotals> = BTreeMap::new();
    for a in &audits {
        findings.extend(a.findings.iter().cloned());
        for (kind, n) in &a.totals {
            *totals.entry(kind.clone()).or_default() += n;
        }
        for (c, t) in &a.currencies {
            let sum = money.entry(*c).or_default();
            sum.accounts += t.accounts;
            sum.posted += t.posted;
            sum.held += t.held;
            sum.pending_credit += t.pending_credit;
            sum.deposited += t.deposited;
            sum.withdrawn += t.withdrawn;
        }
        for (b, t) in &a.buckets {
            let sum = buckets.entry(*b).or_default();
            for (s, t) in [
                (&mut sum.committed, t.committed),
                (&mut sum.debits, t.debits),
                (&mut sum.credits, t.credits),
            ] {
                s.count += t.count;
                s.amount += t.amount;
            }
        }
    }

    // Conservation: per currency, balances = deposits - withdrawals.
    for (c, t) in &money {
        if t.posted != t.deposited - t.withdrawn {
            let f = Finding {
                kind: "conservation".into(),
                node: None,
                account_id: None,
                transaction_id: None,
                detail: format!(
                    "{c}: balances add up to {}, deposits minus withdrawals to {} \
                     (exact only while no transfer is committing: run it again if under load)",
                    c.format(t.posted),
                    c.format(t.deposited - t.withdrawn)
                ),
            };
            *totals.entry(f.kind.clone()).or_default() += 1;
            findings.push(f);
        }
    }

    // Both legs of every transfer: name the transfers of the buckets whose
    // totals differ.
    let odd: Vec<u8> = buckets
        .iter()
        .filter(|(_, t)| t.committed != t.debits || t.committed != t.credits)
        .map(|(b, _)| *b)
        .collect();
    if !odd.is_empty() {
        if odd.len() > MAX_DETAIL_BUCKETS {
            ctx.output.note(format!(
                "{} transaction buckets differ; listing the first {MAX_DETAIL_BUCKETS}",
                odd.len()
            ));
        }
        request.detail_buckets = odd.iter().copied().take(MAX_DETAIL_BUCKETS).collect();
        ctx.output.note(format!(
            "listing the transfers of {} transaction buckets whose legs do not add up...",
            request.detail_buckets.len()
        ));
        let mut records = Vec::new();
        let mut legs = Vec::new();
        for node in &owning {
            request.partitions = map.partitions_of(node);
            let a = ask(ctx, &map, node, &request).await?;
            records.extend(a.records);
            legs.extend(a.legs.into_iter().map(|l| (a.node_id.clone(), l)));
        }
        // The latest node's horizon: what any node may have pruned.
        let horizon = audits.iter().filter_map(|a| a.horizon).max();
        let named = compare_legs(&records, &legs, cutoff, horizon);
        if named.is_empty() {
            ctx.output.note(
                "the differing transfers all changed after the cutoff (in flight) or finished \
                 before the record retention's horizon (maybe pruned); not judged",
            );
        }
        for f in named {
            *totals.entry(f.kind.clone()).or_default() += 1;
            findings.push(f);
        }
    }

    let report = Report {
        clean: findings.is_empty(),
        cutoff,
        nodes,
        currencies: money
            .iter()
            .map(|(c, t)| {
                (
                    c.code().to_string(),
                    CurrencySummary {
                        accounts: t.accounts,
                        balances: c.format(t.posted),
                        deposited: c.format(t.deposited),
                        withdrawn: c.format(t.withdrawn),
                        held: c.format(t.held),
                        pending_credit: c.format(t.pending_credit),
                    },
                )
            })
            .collect(),
        findings,
        totals,
    };
    ctx.output.emit(&report, render);
    if !report.clean {
        let n: i64 = report.totals.values().sum();
        return Err(CtlError::new(
            Exit::CheckFailed,
            format!("audit: {n} things do not hold"),
        ));
    }
    Ok(())
}

async fn ask(
    ctx: &Ctx,
    map: &PartitionMap,
    node: &str,
    request: &AuditRequest,
) -> CtlResult<NodeAudit> {
    let url = ctx.node_url(map, node)?;
    ctx.post_within(
        &format!("node {node}"),
        &format!("{url}{}", routes::AUDIT),
        request,
        NODE_TIMEOUT,
    )
    .await
}

/// Transfer by transfer: a committed decision has one committed debit of
/// `from` and one committed credit of `to`, of its amount; any other has no
/// committed leg. Transfers that changed after `cutoff` are in flight and
/// left out, and so are those that may have been pruned (`horizon`, see
/// [`pruned_maybe`]).
fn compare_legs(
    records: &[AuditRecord],
    legs: &[(String, StoredLeg)],
    cutoff: DateTime<Utc>,
    horizon: Option<DateTime<Utc>>,
) -> Vec<Finding> {
    let records: BTreeMap<TransactionId, &AuditRecord> =
        records.iter().map(|r| (r.transaction_id, r)).collect();
    let mut by_id: BTreeMap<TransactionId, Vec<&(String, StoredLeg)>> = BTreeMap::new();
    for l in legs {
        by_id.entry(l.1.transaction_id).or_default().push(l);
    }
    let ids: BTreeSet<TransactionId> = records.keys().chain(by_id.keys()).copied().collect();
    let mut found = Vec::new();
    for id in ids {
        let record = records.get(&id).copied();
        let legs = by_id.get(&id).map(Vec::as_slice).unwrap_or_default();
        let recent = record.is_some_and(|r| r.decided_at.is_some_and(|d| d >= cutoff))
            || legs.iter().any(|(_, l)| l.updated_at >= cutoff);
        if recent || pruned_maybe(record, legs, horizon) {
            continue;
        }
        let committed = |role: &str| -> Vec<&(String, StoredLeg)> {
            legs.iter()
                .copied()
                .filter(|(_, l)| l.role == role && l.state == LegState::Committed)
                .collect()
        };
        let (debits, credits) = (committed("debit"), committed("credit"));
        let describe = |v: &[&(String, StoredLeg)]| match v {
            [] => "none".to_string(),
            v => v
                .iter()
                .map(|(node, l)| {
                    format!(
                        "{} {} of {} on {node}",
                        l.currency.format(l.amount),
                        l.currency,
                        l.account_id
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let fine = match record {
            Some(r) if r.state == TransferState::Committed => {
                let one = |v: &[&(String, StoredLeg)], account: &wallet_shared::AccountId| matches!(v, [(_, l)] if l.account_id == *account && l.amount == r.amount && l.currency == r.currency);
                one(&debits, &r.from) && one(&credits, &r.to)
            }
            _ => debits.is_empty() && credits.is_empty(),
        };
        if fine {
            continue;
        }
        let decision = match record {
            Some(r) => format!(
                "decision {} ({} {} from {} to {})",
                match r.state {
                    TransferState::Committed => "committed",
                    TransferState::Aborted => "aborted",
                    TransferState::Preparing => "undecided",
                },
                r.currency.format(r.amount),
                r.currency,
                r.from,
                r.to
            ),
            None => "no decision record".to_string(),
        };
        found.push(Finding {
            kind: "transfer_legs_mismatch".into(),
            node: None,
            account_id: None,
            transaction_id: Some(id),
            detail: format!(
                "{decision}; committed debits: {}; committed credits: {}",
                describe(&debits),
                describe(&credits)
            ),
        });
    }
    found
}

/// Whether part of a transfer may have been pruned (its node's record
/// retention): its decision came before `horizon`, or it has no decision
/// record and every leg found finished before it. A record completes only
/// after every leg applied its decision, and a leg finishes only after the
/// decision: a pruned record's legs finished before its horizon, and a
/// pruned leg's decision came before it.
fn pruned_maybe(
    record: Option<&AuditRecord>,
    legs: &[&(String, StoredLeg)],
    horizon: Option<DateTime<Utc>>,
) -> bool {
    let Some(h) = horizon else { return false };
    match record {
        Some(r) => r.decided_at.is_some_and(|d| d < h),
        None => legs.iter().all(|(_, l)| l.updated_at < h),
    }
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let mut t = Table::new(&["NODE", "PARTITIONS", "ACCOUNTS", "TIME"]);
    for n in &r.nodes {
        t.row(vec![
            n.node.clone(),
            n.partitions.to_string(),
            n.accounts.to_string(),
            format!("{} ms", n.millis),
        ]);
    }
    out.push_str(&t.render());
    let mut t = Table::new(&[
        "CURRENCY",
        "ACCOUNTS",
        "BALANCES",
        "DEPOSITED",
        "WITHDRAWN",
        "HELD",
        "PENDING IN",
    ]);
    for (c, s) in &r.currencies {
        t.row(vec![
            c.clone(),
            s.accounts.to_string(),
            s.balances.clone(),
            s.deposited.clone(),
            s.withdrawn.clone(),
            s.held.clone(),
            s.pending_credit.clone(),
        ]);
    }
    out.push_str("\n\n");
    out.push_str(&t.render());
    out.push_str("\n\n");
    if r.clean {
        out.push_str("audit clean: every check holds");
        return out;
    }
    let mut t = Table::new(&["KIND", "NODE", "ACCOUNT", "TRANSACTION", "DETAIL"]);
    for f in &r.findings {
        t.row(vec![
            f.kind.clone(),
            f.node.clone().unwrap_or_default(),
            f.account_id.clone().unwrap_or_default(),
            f.transaction_id.map(|t| t.to_string()).unwrap_or_default(),
            f.detail.clone(),
        ]);
    }
    out.push_str(&t.render());
    let listed = r.findings.len() as i64;
    let total: i64 = r.totals.values().sum();
    if total > listed {
        out.push_str(&format!("\n({total} in all; {listed} listed)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_shared::AccountId;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::seconds(s)
    }

    fn leg(role: &str, account: &str, updated: i64) -> (String, StoredLeg) {
        (
            "node-1".into(),
            StoredLeg {
                transaction_id: TransactionId(uuid::Uuid::from_u128(7)),
                role: role.into(),
                account_id: AccountId::parse(account).unwrap(),
                partition: 0,
                amount: 5,
                currency: Currency::parse("USD").unwrap(),
                state: LegState::Committed,
                reason: None,
                created_at: at(updated - 1),
                updated_at: at(updated),
            },
        )
    }

    fn record(decided: i64) -> AuditRecord {
        AuditRecord {
            transaction_id: TransactionId(uuid::Uuid::from_u128(7)),
            state: TransferState::Committed,
            from: AccountId::parse("a").unwrap(),
            to: AccountId::parse("b").unwrap(),
            amount: 5,
            currency: Currency::parse("USD").unwrap(),
            decided_at: Some(at(decided)),
        }
    }

    #[test]
    fn a_transfer_missing_a_part_is_judged_only_after_the_horizon() {
        let cutoff = at(1_000);
        let legs = [leg("debit", "a", 10), leg("credit", "b", 11)];
        // The record is gone: before the horizon it may have been pruned.
        assert!(compare_legs(&[], &legs, cutoff, Some(at(20))).is_empty());
        assert_eq!(compare_legs(&[], &legs, cutoff, Some(at(11))).len(), 1);
        assert_eq!(compare_legs(&[], &legs, cutoff, None).len(), 1);
        // The legs are gone: so may they, if it was decided before it.
        assert!(compare_legs(&[record(9)], &[], cutoff, Some(at(20))).is_empty());
        assert_eq!(
            compare_legs(&[record(9)], &[], cutoff, Some(at(5))).len(),
            1
        );
        // Whole, it is fine either way.
        assert!(compare_legs(&[record(9)], &legs, cutoff, None).is_empty());
    }
}
