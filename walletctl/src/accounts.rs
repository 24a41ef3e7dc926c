//! `walletctl accounts show`: one account's balance and last events, read
//! from the node that owns it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use wallet_shared::protocol::{EventsPage, HistoricalBalance};
use wallet_shared::{routes, AccountId, PartitionId};

use crate::ctx::Ctx;
use crate::error::{not_found, usage, CtlResult};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum AccountsCmd {
    /// An account's balances and its last events.
    Show {
        /// The account id
        id: String,
        /// How many of its last events to show
        #[arg(long, default_value_t = 10)]
        events: i64,
    },
}

pub async fn run(ctx: &Ctx, cmd: AccountsCmd) -> CtlResult<()> {
    match cmd {
        AccountsCmd::Show { id, events } => show(ctx, &id, events).await,
    }
}

#[derive(Debug, Serialize)]
struct EventView {
    seq: i64,
    #[serde(rename = "type")]
    kind: String,
    amount: String,
    transaction_id: Option<String>,
    counterparty: Option<String>,
    at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct AccountView {
    account_id: String,
    currency: String,
    node: String,
    partition: PartitionId,
    /// Posted balance, and available (posted minus held), as decimal strings.
    balance: String,
    available: String,
    held: String,
    pending_credit: String,
    last_seq: i64,
    /// The last events, oldest first.
    events: Vec<EventView>,
}

async fn show(ctx: &Ctx, id: &str, last: i64) -> CtlResult<()> {
    let id = AccountId::parse(id).map_err(|r| usage(r.message))?;
    if !(1..=1000).contains(&last) {
        return Err(usage("--events must be between 1 and 1000"));
    }
    let map = ctx.map().await?;
    let partition = map.account_partition(&id);
    let node = map
        .owner(partition)
        .ok_or_else(|| not_found(format!("partition {partition} has no owner")))?;
    let url = ctx.node_url(&map, node)?;
    let who = format!("node {node}");
    let routing = format!("map_revision={}&partition={partition}", map.revision);
    let h: HistoricalBalance = ctx
        .get(
            &who,
            &format!("{url}{}?{routing}", routes::BALANCE.with(&id)),
        )
        .await?;
    let b = h.balance;
    let after = (b.last_seq - last).max(0);
    let page: EventsPage = ctx
        .get(
            &who,
            &format!(
                "{url}{}?{routing}&after={after}&limit={last}",
                routes::EVENTS.with(&id)
            ),
        )
        .await?;
    let c = b.currency;
    let view = AccountView {
        account_id: id.to_string(),
        currency: c.code().to_string(),
        node: node.clone(),
        partition,
        balance: c.format(b.posted),
        available: c.format(b.available()),
        held: c.format(b.held),
        pending_credit: c.format(b.pending_credit),
        last_seq: b.last_seq,
        events: page
            .events
            .iter()
            .map(|e| EventView {
                seq: e.seq,
                kind: e.kind.as_str().to_string(),
                amount: c.format(e.amount),
                transaction_id: e.transaction_id.map(|t| t.0.to_string()),
                counterparty: e.counterparty.as_ref().map(|a| a.to_string()),
                at: e.at,
            })
            .collect(),
    };
    ctx.output.emit(&view, |v| {
        let mut out = format!(
            "account     {} ({}) on {}, partition {}\n\
             balance     {} {c}\navailable   {} {c}\nheld        {} {c}\n\
             pending in  {} {c}\nevents      {}\n",
            v.account_id,
            v.currency,
            v.node,
            v.partition,
            v.balance,
            v.available,
            v.held,
            v.pending_credit,
            v.last_seq,
        );
        let mut t = Table::new(&["SEQ", "TYPE", "AMOUNT", "TRANSACTION", "COUNTERPARTY", "AT"]);
        for e in &v.events {
            t.row(vec![
                e.seq.to_string(),
                e.kind.clone(),
                e.amount.clone(),
                e.transaction_id.clone().unwrap_or_default(),
                e.counterparty.clone().unwrap_or_default(),
                e.at.to_string(),
            ]);
        }
        out.push_str(&t.render());
        out
    });
    Ok(())
}
