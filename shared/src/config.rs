//! The one config loader. Each binary's settings and their defaults live in
//! one place, its documented file under `config/` (compiled in); on top of
//! it, a TOML file (optional: the first command-line argument, or
//! `WALLET_CONFIG`), then `WALLET_*` environment variables
//! (`WALLET_LISTEN_ADDR=127.0.0.1:9000`). Lists in the environment are
//! comma-separated (`WALLET_ETCD_ENDPOINTS=http://a:2379,http://b:2379`).
//!
//! Every service's settings struct denies unknown fields: a key in a file
//! that is no setting (a misspelling) stops the service at start, naming
//! the key. The environment is shared with other programs (walletctl's
//! `WALLET_COORDINATOR_URL`, `WALLET_CONFIG` itself, the container's
//! `WALLET_INIT_NODES`, another service's settings), so a `WALLET_*`
//! variable that is no setting of this service is left out and reported
//! as a warning in the log (see [`ignored_env`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use config::{Config, ConfigBuilder, File, FileFormat};
use serde::de::DeserializeOwned;

/// `WALLET_*` variables the last [`load`] left out, for the log.
static IGNORED_ENV: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `defaults` (the binary's `config/*.toml`), then `file`, then the
/// environment's `WALLET_*` variables that name one of `T`'s settings.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> anyhow::Result<T> {
    let mut builder = with_defaults(defaults);
    if let Some(file) = file {
        builder = builder.add_source(File::from(file).required(true));
    }
    let known = field_names::<T>();
    let mut used = HashMap::new();
    let mut ignored = Vec::new();
    for (name, value) in std::env::vars() {
        let Some(key) = name.strip_prefix("WALLET_") else {
            continue;
        };
        if known.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            used.insert(name, value);
        } else if name != "WALLET_CONFIG" {
            ignored.push(name);
        }
    }
    ignored.sort();
    *IGNORED_ENV.lock().unwrap_or_else(|p| p.into_inner()) = ignored;
    let env = config::Environment::with_prefix("WALLET")
        .source(Some(used))
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("etcd_endpoints");
    let loaded = builder.add_source(env).build()?;
    Ok(loaded.try_deserialize()?)
}

/// The `WALLET_*` variables the last [`load`] left out because they name
/// no setting of the service (`WALLET_CONFIG` apart); `telemetry::init_as`
/// logs them as a warning.
pub fn ignored_env() -> Vec<String> {
    IGNORED_ENV
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// The field names of a struct `T` derives `Deserialize` for, as serde
/// sees them (asked of a deserializer that only listens).
pub fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("listening for field names")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(None);
    let _ = T::deserialize(&mut fields);
    fields.0.unwrap_or(&[])
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

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        listen_addr: String,
        #[serde(default)]
        crash_at: Option<String>,
    }

    #[test]
    fn field_names_are_the_struct_s() {
        assert_eq!(
            super::field_names::<Settings>(),
            ["listen_addr", "crash_at"]
        );
    }

    #[test]
    fn an_unknown_key_in_a_file_is_refused_by_name() {
        let err =
            super::from_toml::<Settings>("listen_addr = \"a\"", "listen_adr = \"b\"").unwrap_err();
        assert!(format!("{err:#}").contains("listen_adr"), "{err:#}");
    }
}
