//! A manager driven as an operator drives one: a config file of grants passed to every
//! command, a daemon started with it, group specs committed from JSON, status read back.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::Env;
use super::daemon::Daemon;

pub struct Manager<'a> {
    pub env: &'a Env,
    config: String,
    poll: String,
}

impl<'a> Manager<'a> {
    /// A manager on `env` with the grants of `config`, polling every `poll`.
    pub fn new(env: &'a Env, config: &Path, poll: Duration) -> Self {
        Manager {
            env,
            config: config.display().to_string(),
            poll: format!("{}ms", poll.as_millis()),
        }
    }

    /// Runs the CLI with the config; returns stdout, panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["--config", self.config.as_str()];
        all.extend(args);
        self.env.ok(&all, None)
    }

    pub fn serve(&self) -> Daemon {
        Daemon::start(
            self.env,
            &["--config", &self.config, "--poll-interval", &self.poll],
        )
    }

    pub fn commit(&self, spec: &Value) {
        let path = self.env.data_dir().join("spec.json");
        std::fs::write(&path, spec.to_string()).unwrap();
        self.cli(&["group", "commit", path.to_str().unwrap()]);
    }

    /// The `status` of `group describe ID -o json`.
    pub fn status(&self, id: &str) -> Value {
        let out = self.cli(&["group", "describe", id, "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
    }

    /// The group's instances as its status lists them.
    pub fn instances(&self, id: &str) -> Vec<Value> {
        self.status(id)["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}
