//! The host's own configuration file (`--config FILE`, TOML). Flags given on the command line
//! win over the file. Grants for built-in plugins live here, one section per plugin, with the
//! same keys as a plugin's grant file:
//!
//! ```toml
//! data_dir = "/var/lib/infrakit"
//! plugins_dir = "/etc/infrakit/plugins"
//!
//! [serve]
//! socket = "/run/infrakit.sock"
//! tcp = "127.0.0.1:7070"
//! token_file = "/etc/infrakit/token"
//! poll_interval = "1s"
//! plugin_scan_interval = "500ms"
//! revisions_kept = 50
//!
//! [plugins.instance-file]
//! config = { dir = "/instances" }
//! [[plugins.instance-file.files]]
//! host = "/srv/instances"
//! guest = "/instances"
//! mode = "read-write"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::grants::{self, Grants, RawGrants};

/// The parsed file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where state lives.
    pub data_dir: Option<PathBuf>,
    /// The plugin directory.
    pub plugins_dir: Option<PathBuf>,
    /// Grants of built-in plugins, by name.
    pub plugins: BTreeMap<String, Grants>,
    /// Daemon settings.
    pub serve: ServeConfig,
}

/// `[serve]`: daemon settings; each has a flag of the same name that wins over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The unix socket.
    pub socket: Option<PathBuf>,
    /// A TCP address to serve on too.
    pub tcp: Option<std::net::SocketAddr>,
    /// Where the TCP bearer token is.
    pub token_file: Option<PathBuf>,
    /// The controller's poll interval.
    pub poll_interval: Option<crate::spec::HumanDuration>,
    /// How often the plugin directory is rescanned.
    pub plugin_scan_interval: Option<crate::spec::HumanDuration>,
    /// Where durable state lives: `etcd://HOST:PORT[,...]` or `etcds://...` (default: the
    /// embedded store in the data directory).
    pub store: Option<String>,
    /// The key prefix in etcd.
    pub store_prefix: Option<String>,
    /// etcd user (the password comes from INFRAKIT_STORE_PASSWORD).
    pub store_user: Option<String>,
    /// PEM CA certificate that signed etcd's (etcds://).
    pub store_ca: Option<PathBuf>,
    /// PEM client certificate and key for etcd (mutual TLS).
    pub store_cert: Option<PathBuf>,
    /// The key of `store_cert`.
    pub store_key: Option<PathBuf>,
    /// The leadership lease's time to live (with `store`).
    pub lease_ttl: Option<crate::spec::HumanDuration>,
    /// Revisions of each group's spec kept in the store.
    pub revisions_kept: Option<u64>,
    /// This manager's name in the election (with `store`).
    pub node: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    #[serde(default)]
    plugins: BTreeMap<String, RawGrants>,
    #[serde(default)]
    serve: ServeConfig,
}

impl Config {
    /// Reads and validates the file.
    pub fn load(path: &Path) -> Result<Config, grants::Error> {
        let text = std::fs::read_to_string(path).map_err(|source| grants::Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, grants::Error> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| grants::syntax_error(text, path, e))?;
        let mut plugins = BTreeMap::new();
        for (name, section) in raw.plugins {
            let grants = Grants::from_raw(section, path, &format!("plugins.{name}."))?;
            plugins.insert(name, grants);
        }
        Ok(Config {
            data_dir: raw.data_dir,
            plugins_dir: raw.plugins_dir,
            plugins,
            serve: raw.serve,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_grants_use_the_grant_file_keys() {
        let c = Config::parse(
            "data_dir = \"/d\"\n[plugins.instance-file]\nconfig = { dir = \"/x\" }\n[plugins.instance-file.limits]\nmemory = \"1 MiB\"\n",
            Path::new("/etc/infrakit.toml"),
        )
        .unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/d")));
        let g = &c.plugins["instance-file"];
        assert_eq!(g.config["dir"], "/x");
        assert_eq!(g.limits.memory, 1 << 20);
        let c = Config::parse(
            "[serve]\npoll_interval = \"250ms\"\ntcp = \"127.0.0.1:7070\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            c.serve.poll_interval.unwrap().0,
            std::time::Duration::from_millis(250)
        );
        assert!(c.serve.tcp.is_some());
    }

    #[test]
    fn errors_point_into_the_file() {
        let err = Config::parse(
            "[plugins.instance-file.limits]\ncpu = \"soon\"\n",
            Path::new("/etc/infrakit.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/infrakit.toml")
                && err.contains("`plugins.instance-file.limits.cpu`"),
            "{err}"
        );
        let err = Config::parse("data_dri = \"/d\"\n", Path::new("/etc/infrakit.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/infrakit.toml:1:") && err.contains("data_dri"),
            "{err}"
        );
    }
}
