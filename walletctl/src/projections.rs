//! `walletctl projections ...`: the projector's read models. `rebuild`
//! empties them and their cursors, reads every node's history (its event
//! log, never pruned, and the aborted transfers it still keeps), then
//! follows each node's feed from where its outbox is still kept, skipping
//! what the history gave (with the projector's own code,
//! [`Follower::rebuild`], so the result is the same as the running
//! projector's); `status` shows each feed's cursor and lag. A projector
//! running meanwhile is harmless: its pages wait while the history is read,
//! and cursors move by compare-and-set, so each entry still counts once.

use std::time::Duration;

use projector::{Follower, Projections};
use serde::Serialize;

use crate::ctx::Ctx;
use crate::error::{usage, CtlError, CtlResult, Exit};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCmd {
    /// Empties the read models and rebuilds them from every node's history, then its feed
    Rebuild {
        /// Give up if the feeds are not replayed within this many seconds
        #[arg(long, default_value_t = 600)]
        within: u64,
        /// The projector's feed consumer name (its `consumer_name`): the
        /// rebuild moves its registered positions back to where it starts
        #[arg(long, default_value = "projector")]
        consumer: String,
    },
    /// Each feed's cursor, head and lag
    Status,
}

#[derive(Debug, Serialize)]
struct Rebuilt {
    node_id: String,
    position: i64,
    head: i64,
}

pub async fn run(ctx: &Ctx, cmd: ProjectionsCmd) -> CtlResult<()> {
    let url = ctx.projector_database_url.as_deref().ok_or_else(|| {
        usage("the projector's database is unknown: --projector-database-url, WALLET_PROJECTOR_DATABASE_URL or the manifest")
    })?;
    let projections = Projections::connect(url, ctx.timeout).await.map_err(|e| {
        CtlError::new(
            Exit::Unreachable,
            format!("cannot reach the projector's database: {e:#}"),
        )
    })?;
    let db =
        |e: sqlx::Error| CtlError::new(Exit::Unreachable, format!("the projector's database: {e}"));
    match cmd {
        ProjectionsCmd::Status => {
            let cursors = projections.cursors().await.map_err(db)?;
            ctx.output.emit(&cursors, |cursors| {
                let mut t = Table::new(&["NODE", "POSITION", "HEAD", "LAG", "LAST ENTRY AT"]);
                for c in cursors {
                    t.row(vec![
                        c.node_id.clone(),
                        c.position.to_string(),
                        c.head.to_string(),
                        c.lag.to_string(),
                        c.last_entry_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    ]);
                }
                t.render()
            });
            Ok(())
        }
        ProjectionsCmd::Rebuild { within, consumer } => {
            let map = wallet_shared::map::follow_map(
                &ctx.etcd_endpoints,
                &ctx.etcd_access,
                &ctx.etcd_prefix,
                ctx.timeout,
            )
            .await
            .map_err(CtlError::from)?;
            let follower = Follower::new(
                projections.clone(),
                map,
                ctx.timeout,
                5_000,
                ctx.secret()?.clone(),
            )
            .map_err(|e| CtlError::new(Exit::Failed, format!("{e:#}")))?
            .registered_as(&consumer);
            ctx.output
                .note("emptying the read models; reading every node's history");
            let starts = follower
                .rebuild()
                .await
                .map_err(|e| CtlError::new(Exit::Unreachable, format!("{e:#}")))?;
            ctx.output.note(format!(
                "history read; following every feed from {}",
                starts
                    .iter()
                    .map(|(n, p)| format!("{n}:{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            let done = follower
                .catch_up(Duration::from_secs(within))
                .await
                .map_err(|e| CtlError::new(Exit::Unreachable, format!("{e:#}")))?;
            follower
                .finish_rebuild()
                .await
                .map_err(|e| CtlError::new(Exit::Unreachable, format!("{e:#}")))?;
            let rows: Vec<Rebuilt> = done
                .into_iter()
                .map(|(node_id, s)| Rebuilt {
                    node_id,
                    position: s.position,
                    head: s.head,
                })
                .collect();
            ctx.output.emit(&rows, |rows| {
                let mut t = Table::new(&["NODE", "REPLAYED UP TO", "HEAD"]);
                for r in rows {
                    t.row(vec![
                        r.node_id.clone(),
                        r.position.to_string(),
                        r.head.to_string(),
                    ]);
                }
                t.render()
            });
            Ok(())
        }
    }
}
