//! `walletctl tx ...`: one transfer's decision and legs, the transfers in
//! doubt, and resolving one now (by the coordinator's recovery code: this
//! file never runs the protocol itself).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use wallet_shared::admin::{
    InDoubt, InDoubtRequest, NodeLegs, ResolveReply, ResolveRequest, StoredLeg,
};
use wallet_shared::protocol::{TransferRecord, TransferState};
use wallet_shared::{routes, PartitionId, PartitionMap, TransactionId};

use crate::ctx::Ctx;
use crate::error::{not_found, usage, CtlError, CtlResult, Exit};
use crate::output::Table;

/// A resolve may retry every call a few times: give it this long.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Subcommand)]
pub enum TxCmd {
    /// A transfer's decision record and both legs, as their nodes hold them.
    Show {
        /// The transaction id (UUID)
        id: String,
    },
    /// Transfers in doubt on every node, oldest first: undecided records,
    /// decided ones not yet applied by both legs, legs still prepared.
    Pending {
        /// At most this many of each kind per node
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Drives one transfer in doubt to its end now, through the
    /// coordinator's recovery: applies its decision, or aborts it if
    /// undecided and its coordinator's lease has run out.
    Resolve {
        /// The transaction id (UUID)
        id: String,
        /// Abort an undecided transfer even while its coordinator's lease
        /// runs (if that coordinator decided first, its decision is applied)
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: TxCmd) -> CtlResult<()> {
    match cmd {
        TxCmd::Show { id } => show(ctx, parse_id(&id)?).await,
        TxCmd::Pending { limit } => pending(ctx, limit).await,
        TxCmd::Resolve { id, force } => resolve(ctx, parse_id(&id)?, force).await,
    }
}

fn parse_id(id: &str) -> CtlResult<TransactionId> {
    TransactionId::parse(id).map_err(|r| usage(r.message))
}

fn state_name(s: TransferState) -> &'static str {
    match s {
        TransferState::Preparing => "preparing",
        TransferState::Committed => "committed",
        TransferState::Aborted => "aborted",
    }
}

fn leg_state_name(s: wallet_shared::protocol::LegState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

#[derive(Debug, Serialize)]
struct Decision {
    node: String,
    partition: PartitionId,
    /// `transfer`, `deposit` or `withdrawal` (whose accounts are both its one account).
    kind: &'static str,
    state: &'static str,
    from_account: String,
    to_account: String,
    amount: String,
    currency: String,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    completed: bool,
}

#[derive(Debug, Serialize)]
struct LegView {
    node: String,
    role: String,
    account_id: String,
    partition: PartitionId,
    /// Whether the map gives this leg's partition to the node that holds it
    /// (a copy left on a previous owner says `false`).
    owner: bool,
    amount: String,
    currency: String,
    state: String,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct TxView {
    transaction_id: TransactionId,
    decision: Option<Decision>,
    legs: Vec<LegView>,
    /// Nodes that did not answer, and why.
    unreachable: BTreeMap<String, String>,
}

fn leg_view(map: &PartitionMap, node: &str, l: &StoredLeg) -> LegView {
    LegView {
        node: node.to_string(),
        role: l.role.clone(),
        account_id: l.account_id.to_string(),
        partition: l.partition,
        owner: map.owner(l.partition).map(String::as_str) == Some(node),
        amount: l.currency.format(l.amount),
        currency: l.currency.code().to_string(),
        state: leg_state_name(l.state),
        reason: l.reason.as_ref().map(|r| r.to_string()),
        created_at: l.created_at,
        updated_at: l.updated_at,
    }
}

/// The record at the transfer's decision partition; `None` if there is none.
async fn record(
    ctx: &Ctx,
    map: &PartitionMap,
    id: TransactionId,
) -> CtlResult<Option<(String, PartitionId, TransferRecord)>> {
    let home = map.decision_partition(id);
    let node = map
        .owner(home)
        .ok_or_else(|| not_found(format!("partition {home} has no owner")))?;
    let url = ctx.node_url(map, node)?;
    let got: CtlResult<TransferRecord> = ctx
        .get(
            &format!("node {node}"),
            &format!(
                "{url}{}?map_revision={}&partition={home}",
                routes::TRANSFER.with(id),
                map.revision
            ),
        )
        .await;
    match got {
        Ok(r) => Ok(Some((node.clone(), home, r))),
        Err(e) if e.exit == Exit::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn show(ctx: &Ctx, id: TransactionId) -> CtlResult<()> {
    let map = ctx.map().await?;
    let map = &map;
    let asks = map.nodes.iter().map(|(node, url)| async move {
        let got: CtlResult<NodeLegs> = ctx
            .get(
                &format!("node {node}"),
                &format!("{url}{}", routes::LEGS_OF.with(id)),
            )
            .await;
        (node.clone(), got)
    });
    let (record, answers) = tokio::join!(record(ctx, map, id), futures::future::join_all(asks));
    let record = record?;
    let mut legs = Vec::new();
    let mut unreachable = BTreeMap::new();
    for (node, got) in answers {
        match got {
            Ok(found) => legs.extend(found.legs.iter().map(|l| leg_view(map, &node, l))),
            Err(e) => {
                unreachable.insert(node, e.to_string());
            }
        }
    }
    legs.sort_by(|a, b| (&a.role, &a.node).cmp(&(&b.role, &b.node)));
    if record.is_none() && legs.is_empty() {
        return Err(match unreachable.is_empty() {
            true => not_found(format!(
                "no transfer, deposit or withdrawal {id} on any node"
            )),
            false => CtlError::new(
                Exit::Unreachable,
                format!(
                    "{id} was not found on the nodes that answered; {} did not answer",
                    unreachable.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
        });
    }
    let view = TxView {
        transaction_id: id,
        decision: record.map(|(node, partition, r)| Decision {
            node,
            partition,
            kind: r.kind.as_str(),
            state: state_name(r.state),
            from_account: r.spec.from.to_string(),
            to_account: r.spec.to.to_string(),
            amount: r.spec.currency.format(r.spec.amount.minor()),
            currency: r.spec.currency.code().to_string(),
            reason: r.reason.map(|r| r.to_string()),
            created_at: r.created_at,
            decided_at: r.decided_at,
            completed: r.completed,
        }),
        legs,
        unreachable,
    };
    ctx.output.emit(&view, |v| {
        let mut out = format!("transaction {}\n", v.transaction_id);
        match &v.decision {
            Some(d) => {
                out.push_str(&format!(
                    "decision    {} on {} (partition {}){}\n",
                    d.state,
                    d.node,
                    d.partition,
                    if d.completed {
                        ", completed"
                    } else {
                        ", not completed"
                    }
                ));
                if d.kind == "transfer" {
                    out.push_str(&format!(
                        "transfer    {} {} from {} to {}\n",
                        d.amount, d.currency, d.from_account, d.to_account
                    ));
                } else {
                    out.push_str(&format!(
                        "{:<11} {} {} on {}\n",
                        d.kind, d.amount, d.currency, d.to_account
                    ));
                }
                out.push_str(&format!(
                    "created     {}\ndecided     {}\n",
                    d.created_at,
                    d.decided_at.map_or("-".to_string(), |t| t.to_string())
                ));
                if let Some(r) = &d.reason {
                    out.push_str(&format!("reason      {r}\n"));
                }
            }
            None => {
                out.push_str("decision    none (no record: not a transfer, or presumed aborted)\n")
            }
        }
        let mut t = Table::new(&[
            "ROLE",
            "NODE",
            "ACCOUNT",
            "PARTITION",
            "AMOUNT",
            "STATE",
            "UPDATED",
        ]);
        for l in &v.legs {
            t.row(vec![
                l.role.clone(),
                if l.owner {
                    l.node.clone()
                } else {
                    format!("{} (not owner)", l.node)
                },
                l.account_id.clone(),
                l.partition.to_string(),
                format!("{} {}", l.amount, l.currency),
                l.state.clone(),
                l.updated_at.to_string(),
            ]);
        }
        out.push_str(&t.render());
        for (node, why) in &v.unreachable {
            out.push_str(&format!("\nnode {node} did not answer: {why}"));
        }
        out
    });
    Ok(())
}

#[derive(Debug, Serialize)]
struct PendingRow {
    /// `undecided`, `decided` (not applied by both legs yet) or `prepared_leg`.
    kind: &'static str,
    transaction_id: TransactionId,
    node: String,
    partition: PartitionId,
    state: String,
    /// `from -> to` for a record, the account for a leg.
    what: String,
    amount: String,
    currency: String,
    /// When it entered the state it is stuck in.
    since: DateTime<Utc>,
    age_ms: i64,
    /// Undecided records: `expired`, or how long the coordinator still holds it.
    lease: Option<String>,
}

#[derive(Debug, Serialize)]
struct Pending {
    transfers: Vec<PendingRow>,
    unreachable: BTreeMap<String, String>,
}

fn pending_rows(node: &str, found: InDoubt, now: DateTime<Utc>) -> Vec<PendingRow> {
    let mut rows = Vec::new();
    for t in found.transfers {
        let r = &t.record;
        let undecided = r.state == TransferState::Preparing;
        let since = if undecided {
            r.created_at
        } else {
            r.decided_at.unwrap_or(r.created_at)
        };
        let lease = undecided.then(|| {
            if t.lease_until <= now {
                "expired".to_string()
            } else {
                format!("{} ms left", (t.lease_until - now).num_milliseconds())
            }
        });
        rows.push(PendingRow {
            kind: if undecided { "undecided" } else { "decided" },
            transaction_id: r.spec.transaction_id,
            node: node.to_string(),
            partition: t.partition,
            state: state_name(r.state).to_string(),
            what: format!("{} -> {}", r.spec.from, r.spec.to),
            amount: r.spec.currency.format(r.spec.amount.minor()),
            currency: r.spec.currency.code().to_string(),
            since,
            age_ms: (now - since).num_milliseconds(),
            lease,
        });
    }
    for l in found.legs {
        rows.push(PendingRow {
            kind: "prepared_leg",
            transaction_id: l.transaction_id,
            node: node.to_string(),
            partition: l.partition,
            state: leg_state_name(l.state),
            what: format!("{} of {}", l.role, l.account_id),
            amount: l.currency.format(l.amount),
            currency: l.currency.code().to_string(),
            since: l.created_at,
            age_ms: (now - l.created_at).num_milliseconds(),
            lease: None,
        });
    }
    rows
}

async fn pending(ctx: &Ctx, limit: i64) -> CtlResult<()> {
    if limit < 1 {
        return Err(usage("--limit must be at least 1"));
    }
    let map = ctx.map().await?;
    let map = &map;
    let asks = map.nodes.iter().map(|(node, url)| async move {
        let req = InDoubtRequest {
            partitions: map.partitions_of(node),
            limit,
        };
        let got: CtlResult<InDoubt> = ctx
            .post(
                &format!("node {node}"),
                &format!("{url}{}", routes::IN_DOUBT),
                &req,
            )
            .await;
        (node.clone(), got)
    });
    let now = Utc::now();
    let mut transfers = Vec::new();
    let mut unreachable = BTreeMap::new();
    for (node, got) in futures::future::join_all(asks).await {
        match got {
            Ok(found) => transfers.extend(pending_rows(&node, found, now)),
            Err(e) => {
                unreachable.insert(node, e.to_string());
            }
        }
    }
    transfers.sort_by_key(|r| (r.since, r.transaction_id));
    let report = Pending {
        transfers,
        unreachable,
    };
    ctx.output.emit(&report, |p| {
        let mut t = Table::new(&[
            "AGE",
            "KIND",
            "TRANSACTION",
            "NODE",
            "PARTITION",
            "STATE",
            "WHAT",
            "AMOUNT",
            "LEASE",
        ]);
        for r in &p.transfers {
            t.row(vec![
                format!("{}.{}s", r.age_ms / 1000, (r.age_ms % 1000).abs() / 100),
                r.kind.to_string(),
                r.transaction_id.to_string(),
                r.node.clone(),
                r.partition.to_string(),
                r.state.clone(),
                r.what.clone(),
                format!("{} {}", r.amount, r.currency),
                r.lease.clone().unwrap_or_default(),
            ]);
        }
        let mut out = if p.transfers.is_empty() {
            "nothing in doubt".to_string()
        } else {
            t.render()
        };
        for (node, why) in &p.unreachable {
            out.push_str(&format!("\nnode {node} did not answer: {why}"));
        }
        out
    });
    if !report.unreachable.is_empty() {
        return Err(CtlError::new(
            Exit::Unreachable,
            format!(
                "the list is incomplete: {} did not answer",
                report
                    .unreachable
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Resolved {
    transaction_id: TransactionId,
    state: &'static str,
    finished: bool,
    action: String,
}

async fn resolve(ctx: &Ctx, id: TransactionId, force: bool) -> CtlResult<()> {
    let reply: ResolveReply = ctx
        .post_coordinator(
            &routes::RESOLVE.with(id),
            &ResolveRequest { force },
            RESOLVE_TIMEOUT,
        )
        .await
        .map_err(|mut e| {
            if e.exit == Exit::Conflict && !force {
                e.message
                    .push_str(" (walletctl tx resolve --force aborts it now)");
            }
            e
        })?;
    let resolved = Resolved {
        transaction_id: id,
        state: state_name(reply.record.state),
        finished: reply.finished,
        action: reply.action,
    };
    ctx.output.emit(&resolved, |r| {
        format!(
            "transaction {}: {} ({})",
            r.transaction_id, r.state, r.action
        )
    });
    if !resolved.finished {
        return Err(CtlError::new(
            Exit::Unreachable,
            format!(
                "{id} is {}, but not every leg has applied it yet",
                resolved.state
            ),
        ));
    }
    Ok(())
}
