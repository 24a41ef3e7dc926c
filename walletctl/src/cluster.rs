//! `walletctl cluster init`: the first partition map.

use serde::Serialize;
use wallet_shared::{NodeId, PartitionMap};

use crate::ctx::Ctx;
use crate::error::{conflict, usage, CtlResult};
use crate::output::Table;

/// More partitions than this is a typo, not a plan.
const MAX_PARTITIONS: u32 = 65_536;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCmd {
    /// Writes the first partition map: N partitions round-robin over the nodes.
    Init {
        /// Number of partitions (many more than nodes, e.g. 64: moves go a
        /// partition at a time). Never changes afterwards.
        #[arg(long)]
        partitions: u32,
        /// A node and its base URL, e.g. node-1=http://127.0.0.1:7001 (repeat)
        #[arg(long = "node", value_name = "ID=URL", required = true)]
        nodes: Vec<String>,
        /// Replace an existing map (every partition gets a new owner: only
        /// for a cluster that holds no data)
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(ctx: &Ctx, cmd: ClusterCmd) -> CtlResult<()> {
    match cmd {
        ClusterCmd::Init {
            partitions,
            nodes,
            force,
        } => init(ctx, partitions, &nodes, force).await,
    }
}

/// A node id: 1 to 64 characters of `[A-Za-z0-9_-]` (it is an etcd key).
pub fn parse_node_id(id: &str) -> CtlResult<NodeId> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(id.to_string())
    } else {
        Err(usage(format!(
            "node id {id:?} is not valid: 1 to 64 characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// A node's base URL: http(s), a host, no path; kept without a trailing `/`.
pub fn parse_node_url(url: &str) -> CtlResult<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| usage(format!("node URL {url:?} is not valid: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(usage(format!(
            "node URL {url:?} must be http:// or https:// with a host, e.g. http://127.0.0.1:7001"
        )));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(usage(format!(
            "node URL {url:?} must be a base URL without a path"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn parse_nodes(specs: &[String]) -> CtlResult<Vec<(NodeId, String)>> {
    let mut nodes: Vec<(NodeId, String)> = Vec::new();
    for spec in specs {
        let (id, url) = spec
            .split_once('=')
            .ok_or_else(|| usage(format!("--node {spec:?}: expected ID=URL")))?;
        let id = parse_node_id(id)?;
        if nodes.iter().any(|(known, _)| *known == id) {
            return Err(usage(format!("node {id} is given twice")));
        }
        nodes.push((id, parse_node_url(url)?));
    }
    Ok(nodes)
}

#[derive(Debug, Serialize)]
pub struct MapSummary {
    pub map_revision: i64,
    pub partitions: u32,
    pub nodes: Vec<NodeSummary>,
}

#[derive(Debug, Serialize)]
pub struct NodeSummary {
    pub node_id: String,
    pub url: String,
    pub partitions: usize,
}

impl MapSummary {
    pub fn of(map: &PartitionMap) -> Self {
        MapSummary {
            map_revision: map.revision,
            partitions: map.partition_count(),
            nodes: map
                .nodes
                .iter()
                .map(|(id, url)| NodeSummary {
                    node_id: id.clone(),
                    url: url.clone(),
                    partitions: map.partitions_of(id).len(),
                })
                .collect(),
        }
    }

    pub fn render(&self) -> String {
        let mut t = Table::new(&["NODE", "URL", "PARTITIONS"]);
        for n in &self.nodes {
            t.row(vec![
                n.node_id.clone(),
                n.url.clone(),
                n.partitions.to_string(),
            ]);
        }
        format!(
            "{}\n{} partitions, map revision {}",
            t.render(),
            self.partitions,
            self.map_revision
        )
    }
}

async fn init(ctx: &Ctx, partitions: u32, specs: &[String], force: bool) -> CtlResult<()> {
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(usage(format!(
            "--partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}"
        )));
    }
    let nodes = parse_nodes(specs)?;
    let store = ctx.map_store().await?;
    let map = match store.init(partitions, &nodes, force).await {
        Ok(map) => map,
        Err(wallet_shared::map::MapError::AlreadyExists(prefix)) => {
            let existing = match store.load().await {
                Ok(m) => format!(
                    " ({} partitions over {}, revision {})",
                    m.partition_count(),
                    m.nodes.keys().cloned().collect::<Vec<_>>().join(", "),
                    m.revision
                ),
                Err(_) => String::new(),
            };
            return Err(conflict(format!(
                "a partition map already exists under {prefix:?}{existing}; \
                 --force replaces it (only for a cluster that holds no data)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if force {
        ctx.output
            .note("replaced any earlier map: every partition has a new owner");
    }
    let summary = MapSummary::of(&map);
    ctx.output.emit(&summary, MapSummary::render);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_parse_or_say_why_not() {
        let ok = parse_nodes(&["n-1=http://127.0.0.1:7001/".into()]).unwrap();
        assert_eq!(ok, vec![("n-1".into(), "http://127.0.0.1:7001".into())]);
        for bad in [
            "n-1",
            "=http://a",
            "n 1=http://a",
            "n=ftp://a",
            "n=http://a/x",
            "n=not a url",
        ] {
            assert!(parse_nodes(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_nodes(&["a=http://x".into(), "a=http://y".into()]).is_err());
    }
}
