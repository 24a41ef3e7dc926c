//! The one config loader: a TOML file (optional), then `WALLET_*`
//! environment variables on top (`WALLET_LISTEN_ADDR=127.0.0.1:9000`).
//! Lists in the environment are comma-separated
//! (`WALLET_ETCD_ENDPOINTS=http://a:2379,http://b:2379`).

use std::path::Path;

use serde::de::DeserializeOwned;

pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> anyhow::Result<T> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    let env = config::Environment::with_prefix("WALLET")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("etcd_endpoints");
    let loaded = builder.add_source(env).build()?;
    Ok(loaded.try_deserialize()?)
}
