//! `walletctl replay --account ID | --all`: every account rebuilt from its
//! events on its node (`GET /internal/v1/replay`) and compared with its
//! stored balance, its last sequence number and its snapshots. Prints the
//! mismatches; exit 1 if there is any.

use serde::Serialize;
use wallet_shared::protocol::{ReplayPage, ReplayedAccount};
use wallet_shared::{routes, AccountId};

use crate::ctx::Ctx;
use crate::error::{usage, CtlError, CtlResult, Exit};
use crate::output::Table;

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// One account (asked of the node that owns its partition)
    #[arg(long)]
    account: Option<String>,
    /// Every account on every node
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    accounts: u64,
    events: u64,
    snapshots: u64,
    mismatches: Vec<Mismatch>,
}

#[derive(Debug, Serialize)]
struct Mismatch {
    node_id: String,
    account_id: String,
    problems: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: ReplayArgs) -> CtlResult<()> {
    let map = ctx.map().await?;
    let mut report = Report {
        accounts: 0,
        events: 0,
        snapshots: 0,
        mismatches: Vec::new(),
    };
    if let Some(account) = args.account {
        let id = AccountId::parse(&account).map_err(|r| usage(r.message))?;
        let owner = map
            .owner(map.account_partition(&id))
            .ok_or_else(|| CtlError::new(Exit::Failed, "the map has no owner for it"))?;
        let url = format!(
            "{}{}?account={id}",
            ctx.node_url(&map, owner)?,
            routes::REPLAY
        );
        let page: ReplayPage = ctx.get(&format!("node {owner}"), &url).await?;
        if page.accounts.is_empty() {
            return Err(crate::error::not_found(format!(
                "no account {id} on {owner}"
            )));
        }
        tally(&mut report, &page);
    } else if args.all {
        for (node, base) in &map.nodes {
            let mut after: Option<AccountId> = None;
            loop {
                let mut url = format!("{base}{}?limit=200", routes::REPLAY);
                if let Some(a) = &after {
                    url.push_str(&format!("&after={a}"));
                }
                let page: ReplayPage = ctx.get(&format!("node {node}"), &url).await?;
                tally(&mut report, &page);
                ctx.output.note(format!(
                    "{node}: {} accounts checked so far",
                    report.accounts
                ));
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
    }
    let failed = !report.mismatches.is_empty();
    ctx.output.emit(&report, |r| {
        let mut out = format!(
            "{} accounts, {} events, {} snapshots replayed: {} mismatched",
            r.accounts,
            r.events,
            r.snapshots,
            r.mismatches.len()
        );
        if failed {
            let mut t = Table::new(&["NODE", "ACCOUNT", "PROBLEM"]);
            for m in &r.mismatches {
                for p in &m.problems {
                    t.row(vec![m.node_id.clone(), m.account_id.clone(), p.clone()]);
                }
            }
            out = format!("{}\n{out}", t.render());
        }
        out
    });
    if failed {
        return Err(CtlError::new(
            Exit::CheckFailed,
            format!(
                "{} accounts do not match their events",
                report.mismatches.len()
            ),
        ));
    }
    Ok(())
}

fn tally(report: &mut Report, page: &ReplayPage) {
    for a in &page.accounts {
        let ReplayedAccount {
            account_id,
            events,
            snapshots,
            problems,
            ..
        } = a;
        report.accounts += 1;
        report.events += events;
        report.snapshots += snapshots;
        if !problems.is_empty() {
            report.mismatches.push(Mismatch {
                node_id: page.node_id.clone(),
                account_id: account_id.to_string(),
                problems: problems.clone(),
            });
        }
    }
}
