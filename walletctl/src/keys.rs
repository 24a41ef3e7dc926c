//! `walletctl keys ...`: the API keys callers of the public API present.
//! Written straight into etcd (beside the partition map); every coordinator
//! follows them, so a new or revoked key takes effect within a moment.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use wallet_shared::auth::{KeyRecord, KeyStore, KeysError, Scope};

use crate::ctx::Ctx;
use crate::error::{CtlError, CtlResult, Exit};
use crate::output::Table;

#[derive(Debug, clap::Subcommand)]
pub enum KeysCmd {
    /// Creates a key for a tenant and prints it once (only its hash is
    /// kept, keyed with the cluster secret).
    Create {
        /// The tenant it acts for: the accounts it opens are that tenant's
        #[arg(long)]
        tenant: String,
        /// Comma-separated: transfer, read, admin
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Requests per second it may make (a burst of one second's worth);
        /// past it, 429 rate_limited [default: no limit]
        #[arg(long)]
        rate: Option<u32>,
        /// Write the key to this file (mode 0600) instead of printing it
        #[arg(long)]
        write_to: Option<PathBuf>,
    },
    /// Every key: id, tenant, scopes, rate, revoked or not (never a secret
    /// or a hash).
    List,
    /// Revokes a key: every coordinator refuses it (401) from then on.
    Revoke {
        /// The key's id (the part after `wk_`, before the next `_`)
        key_id: String,
    },
}

/// What `keys list` shows of a key.
#[derive(Debug, Serialize)]
struct KeyRow {
    key_id: String,
    tenant: String,
    scopes: Vec<Scope>,
    rate: Option<u32>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<&KeyRecord> for KeyRow {
    fn from(r: &KeyRecord) -> Self {
        KeyRow {
            key_id: r.key_id.clone(),
            tenant: r.tenant.clone(),
            scopes: r.scopes.clone(),
            rate: r.rate,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

#[derive(Debug, Serialize)]
struct Created {
    #[serde(flatten)]
    row: KeyRow,
    /// The key itself, shown this once (absent when written to a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: KeysCmd) -> CtlResult<()> {
    match cmd {
        KeysCmd::Create {
            tenant,
            scopes,
            rate,
            write_to,
        } => create(ctx, &tenant, &scopes.join(","), rate, write_to).await,
        KeysCmd::List => list(ctx).await,
        KeysCmd::Revoke { key_id } => revoke(ctx, &key_id).await,
    }
}

async fn store(ctx: &Ctx) -> CtlResult<KeyStore> {
    Ok(KeyStore::new(ctx.map_store().await?))
}

fn keys_error(e: KeysError) -> CtlError {
    match e {
        KeysError::Etcd(_) | KeysError::Timeout(_) => {
            CtlError::new(Exit::Unreachable, e.to_string())
        }
        KeysError::Unknown(_) => CtlError::new(Exit::NotFound, e.to_string()),
        KeysError::Invalid { .. } => CtlError::new(Exit::Failed, e.to_string()),
    }
}

async fn create(
    ctx: &Ctx,
    tenant: &str,
    scopes: &str,
    rate: Option<u32>,
    write_to: Option<PathBuf>,
) -> CtlResult<()> {
    let cluster = ctx.cluster_secret.as_ref().ok_or_else(|| {
        CtlError::new(
            Exit::Usage,
            "creating a key needs the cluster secret (it keys the key's hash): \
             --cluster-secret-file, WALLET_CLUSTER_SECRET_FILE or the manifest",
        )
    })?;
    let scopes = Scope::parse_list(scopes).map_err(|e| CtlError::new(Exit::Usage, e))?;
    let (key, record) = KeyRecord::create(cluster, tenant, scopes, rate)
        .map_err(|e| CtlError::new(Exit::Usage, e))?;
    store(ctx)
        .await?
        .insert(&record)
        .await
        .map_err(keys_error)?;
    let shown = match &write_to {
        Some(path) => {
            wallet_shared::secret::Secret::from_text(&key.reveal())
                .and_then(|s| s.write_file(path))
                .map_err(|e| CtlError::new(Exit::Failed, format!("{e:#}")))?;
            ctx.output.note(format!(
                "key {} for tenant {tenant} written to {}",
                record.key_id,
                path.display()
            ));
            None
        }
        None => {
            ctx.output
                .note("the key is shown this once: keep it, it cannot be read back");
            Some(key.reveal())
        }
    };
    let created = Created {
        row: KeyRow::from(&record),
        key: shown,
    };
    ctx.output.emit(&created, |c| {
        let mut t = table();
        t.row(cells(&c.row));
        match &c.key {
            Some(k) => format!("{}\n\nkey: {k}", t.render()),
            None => t.render(),
        }
    });
    Ok(())
}

fn table() -> Table {
    Table::new(&[
        "key_id",
        "tenant",
        "scopes",
        "rate",
        "created_at",
        "revoked_at",
    ])
}

fn cells(r: &KeyRow) -> Vec<String> {
    let scopes: Vec<&str> = r.scopes.iter().map(|s| s.as_str()).collect();
    vec![
        r.key_id.clone(),
        r.tenant.clone(),
        scopes.join(","),
        r.rate.map_or("-".into(), |n| format!("{n}/s")),
        r.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        r.revoked_at
            .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    ]
}

async fn list(ctx: &Ctx) -> CtlResult<()> {
    let (records, _) = store(ctx).await?.load().await.map_err(keys_error)?;
    let rows: Vec<KeyRow> = records.iter().map(KeyRow::from).collect();
    ctx.output.emit(&rows, |rows| {
        let mut t = table();
        for r in rows {
            t.row(cells(r));
        }
        t.render()
    });
    Ok(())
}

async fn revoke(ctx: &Ctx, key_id: &str) -> CtlResult<()> {
    let record = store(ctx).await?.revoke(key_id).await.map_err(keys_error)?;
    ctx.output.note(format!(
        "key {key_id} of tenant {} revoked; coordinators refuse it from their next watch event",
        record.tenant
    ));
    let row = KeyRow::from(&record);
    ctx.output.emit(&row, |r| {
        let mut t = table();
        t.row(cells(r));
        t.render()
    });
    Ok(())
}
