//! The one config loader. Each binary's settings and their defaults live in
//! one place, its documented file under `config/` (compiled in); on top of
//! it, a TOML file (optional: the first command-line argument, or
//! `WALLET_CONFIG`), then `WALLET_*` environment variables
//! (`WALLET_LISTEN_ADDR=127.0.0.1:9000`). Lists in the environment are
//! comma-separated (`WALLET_ETCD_ENDPOINTS=http://a:2379,http://b:2379`).

use std::path::Path;

use config::{Config, ConfigBuilder, File, FileFormat};
use serde::de::DeserializeOwned;

/// `defaults` (the binary's `config/*.toml`), then `file`, then the
/// environment.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> anyhow::Result<T> {
    let mut builder = with_defaults(defaults);
    if let Some(file) = file {
        builder = builder.add_source(File::from(file).required(true));
    }
    let env = config::Environment::with_prefix("WALLET")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("etcd_endpoints");
    let loaded = builder.add_source(env).build()?;
    Ok(loaded.try_deserialize()?)
}

/// Loads over `defaults` with the file named by the first command-line
/// argument, or by `WALLET_CONFIG`, or none.
pub fn load_from_args<T: DeserializeOwned>(defaults: &str) -> anyhow::Result<T> {
    let file = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("WALLET_CONFIG").map(std::path::PathBuf::from));
    load(defaults, file.as_deref())
}

/// `defaults` with TOML `overrides` on top, and nothing from the process's
/// environment: what a test checks a config file with.
pub fn from_toml<T: DeserializeOwned>(defaults: &str, overrides: &str) -> anyhow::Result<T> {
    let loaded = with_defaults(defaults)
        .add_source(File::from_str(overrides, FileFormat::Toml))
        .build()?;
    Ok(loaded.try_deserialize()?)
}

fn with_defaults(defaults: &str) -> ConfigBuilder<config::builder::DefaultState> {
    Config::builder().add_source(File::from_str(defaults, FileFormat::Toml))
}
