//! The CLI's side of the control API: HTTP over the daemon's unix socket (or TCP with a token).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

/// Exit code when the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 5;

/// The daemon could not be reached (distinct exit code).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the infrakit daemon at {target}: {reason} (is `infrakit serve` running on this data directory?)"
)]
pub struct Unreachable {
    target: String,
    reason: String,
}

impl Client {
    /// The daemon went away in the middle of an exchange (a stream it was sending).
    pub fn gone(&self, reason: impl std::fmt::Display) -> Unreachable {
        Unreachable {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A client of one daemon.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    target: String,
}

impl Client {
    /// Over the unix socket at `socket`.
    pub fn unix(socket: &Path) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: "http://infrakit".into(),
            token: None,
            target: socket.display().to_string(),
        })
    }

    /// Over TCP at `url` with a bearer token.
    pub fn tcp(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base: url.trim_end_matches('/').to_string(),
            token,
            target: url.to_string(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| Unreachable {
            target: self.target.clone(),
            reason: crate::error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        anyhow::bail!("{message} (HTTP {})", status.as_u16())
    }

    /// GET, JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(resp.json().await?)
    }

    /// POST with an optional text body, JSON answer.
    pub async fn post(&self, path: &str, body: Option<String>) -> anyhow::Result<Value> {
        let mut req = self.request(reqwest::Method::POST, path);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = self.send(req).await?;
        Ok(resp.json().await?)
    }

    /// GET, streamed response (events).
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }
}

/// Where the daemon's socket is for a data directory.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("infrakit.sock")
}
