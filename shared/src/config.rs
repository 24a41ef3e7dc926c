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

/// Loads with the file named by the first command-line argument, or by
/// `WALLET_CONFIG`, or none.
pub fn load_from_args<T: DeserializeOwned>() -> anyhow::Result<T> {
    let file = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("WALLET_CONFIG").map(std::path::PathBuf::from));
    load(file.as_deref())
}
