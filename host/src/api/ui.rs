//! The status page at `/`: every group with its phase, progress, instances and recent events,
//! the daemon's role and its plugins. Rendered on the server (it works without JavaScript);
//! a small script reloads the `main` element when the daemon signals a change over server-sent
//! events. Every string a plugin or a spec can influence goes through [`esc`]: the page carries
//! no markup it did not write, and its Content-Security-Policy allows no inline script anyway.
//!
//! On TCP the page is behind the API's token: `/?token=T` once sets an `HttpOnly`,
//! `SameSite=Strict` cookie and redirects to `/` so the token leaves the address bar; a login
//! form does the same without a token in any URL. The cookie admits only the page's own `GET`s,
//! never the API.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::{AppState, Daemon};
use crate::event::now_ms;

/// The cookie holding the token on the TCP listener.
pub const COOKIE: &str = "infrakit_token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
/// Events shown per group.
const RECENT_EVENTS: usize = 12;

/// The page's routes (merged into the API router).
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/", get(page))
        .route("/ui/fragment", get(fragment))
        .route("/ui/stream", get(stream))
        .route(
            "/ui/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
}

/// Whether a request path belongs to the page (and so may use the cookie).
pub fn is_page_path(path: &str) -> bool {
    path == "/" || path.starts_with("/ui/")
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// An HTML response with the page's security headers.
pub fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, Html(body)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Escapes text for HTML content and attribute values; control characters (which a plugin may
/// put in anything) are shown escaped, as in the CLI.
pub fn esc(text: &str) -> String {
    let text = crate::plugin::printable(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page around `body`.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/ui/style.css\">\
         <script src=\"/ui/app.js\" defer></script></head>\n<body>{body}</body></html>\n",
        esc(title)
    )
}

async fn page(State(d): State<AppState>) -> Response {
    let main = render(&d).await;
    html(
        StatusCode::OK,
        document(
            "infrakit",
            &format!(
                "<header><h1>infrakit</h1><span id=\"live\" class=\"live\">static</span></header>\n<main id=\"main\">{main}</main>"
            ),
        ),
    )
}

async fn fragment(State(d): State<AppState>) -> Response {
    html(StatusCode::OK, render(&d).await)
}

/// A `change` event whenever the daemon records an event, and at least every two seconds
/// (status changes such as health do not all make events); the page then reloads `main`.
async fn stream(
    State(d): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut events = d.events.subscribe();
    let mut stopping = d.stopping.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(4);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r {
                        return;
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stopping.changed() => return,
            }
            // Coalesce bursts: one reload for a pass that records many events.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while events.try_recv().is_ok() {}
            if tx
                .send(Ok(SseEvent::default()
                    .event("change")
                    .data(now_ms().to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

fn age(created_ms: u64) -> String {
    let s = now_ms().saturating_sub(created_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The content of `main`: summary, groups, plugins.
async fn render(d: &Daemon) -> String {
    let mut out = String::new();
    let role = match &d.elector {
        Some(e) => {
            let l = e.status().await;
            format!(
                "{} ({}; leader {})",
                l.role,
                l.node,
                l.leader.as_deref().unwrap_or("none")
            )
        }
        None => "standalone".to_string(),
    };
    let _ = writeln!(
        out,
        "<section class=\"summary\"><dl>\
         <div><dt>Role</dt><dd id=\"role\">{}</dd></div>\
         <div><dt>Store</dt><dd>{}</dd></div>\
         <div><dt>Version</dt><dd>{}</dd></div>\
         <div><dt>Up</dt><dd>{}</dd></div></dl></section>",
        esc(&role),
        esc(&d.store.location()),
        esc(env!("CARGO_PKG_VERSION")),
        age(now_ms().saturating_sub(d.started.elapsed().as_millis() as u64)),
    );

    let groups = match tokio::time::timeout(Duration::from_secs(1), d.store.groups()).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            let _ = write!(
                out,
                "<p class=\"alert\">The store does not answer: {}</p>",
                esc(&crate::error_chain(&e))
            );
            Vec::new()
        }
        Err(_) => {
            out.push_str("<p class=\"alert\">The store does not answer within 1s.</p>");
            Vec::new()
        }
    };
    let published = super::published(d).await.unwrap_or_default();
    let views: Vec<super::types::GroupView> = groups
        .into_iter()
        .map(|g| super::group_view(d, &published, g))
        .collect();

    let attention: Vec<String> = views
        .iter()
        .filter_map(|v| {
            let phase = v.status.as_ref()?.phase;
            matches!(
                phase,
                crate::plan::Phase::Paused | crate::plan::Phase::Failing
            )
            .then(|| {
                format!(
                    "<a href=\"#group-{id}\">{id}</a> ({phase})",
                    id = esc(&v.id)
                )
            })
        })
        .collect();
    if !attention.is_empty() {
        let _ = write!(
            out,
            "<p class=\"alert\" id=\"attention\" role=\"alert\">{} need{} attention: {}</p>",
            if attention.len() == 1 {
                "1 group".to_string()
            } else {
                format!("{} groups", attention.len())
            },
            if attention.len() == 1 { "s" } else { "" },
            attention.join(", ")
        );
    }
    out.push_str("<section id=\"groups\"><h2>Groups</h2>");
    if views.is_empty() {
        out.push_str("<p class=\"empty\">No group is committed. <code>infrakit group commit FILE</code> adds one.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Group</th><th>Phase</th><th>Progress</th><th>Revision</th><th>Message</th></tr></thead><tbody>");
        for v in &views {
            let (phase, current, size, message) = match &v.status {
                Some(s) => (
                    s.phase.to_string(),
                    s.current,
                    s.size,
                    s.last_error
                        .clone()
                        .or_else(|| s.messages.first().cloned())
                        .unwrap_or_default(),
                ),
                None => ("pending".to_string(), 0, v.spec.size(), String::new()),
            };
            let phase = if matches!(v.lifecycle, crate::store::Lifecycle::Destroying) {
                "destroying".to_string()
            } else {
                phase
            };
            let _ = write!(
                out,
                "<tr class=\"group-row\" data-group=\"{id}\" data-phase=\"{phase}\">\
                 <td><a href=\"#group-{id}\">{id}</a></td>\
                 <td><span class=\"phase phase-{phase}\">{phase}</span></td>\
                 <td><progress value=\"{current}\" max=\"{size}\"></progress> <span class=\"count\">{current} / {size}</span></td>\
                 <td>{rev}</td><td class=\"message\">{msg}</td></tr>",
                id = esc(&v.id),
                phase = esc(&phase),
                rev = v.revision,
                msg = esc(&message),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>\n");

    let last = d.store.last_event().await.unwrap_or(0);
    let recent = d
        .store
        .events(last.saturating_sub(500), None, 500)
        .await
        .unwrap_or_default();
    for v in &views {
        let Some(s) = &v.status else { continue };
        let phase = s.phase.to_string();
        let _ = write!(
            out,
            "<section class=\"group\" id=\"group-{id}\" data-phase=\"{phase}\"><h2>{id} <span class=\"phase phase-{phase}\">{phase}</span></h2>",
            id = esc(&v.id),
            phase = esc(&phase),
        );
        if matches!(
            s.phase,
            crate::plan::Phase::Paused | crate::plan::Phase::Failing
        ) {
            let why = s
                .last_error
                .iter()
                .chain(s.messages.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            let _ = write!(
                out,
                "<p class=\"alert\" role=\"alert\">{}: {}</p>",
                esc(&phase),
                esc(&why)
            );
        }
        out.push_str("<table class=\"instances\"><thead><tr><th>Instance</th><th>Logical ID</th><th>Health</th><th>Configuration</th><th>Age</th></tr></thead><tbody>");
        for i in &s.instances {
            let health = format!("{:?}", i.health).to_lowercase();
            let _ = write!(
                out,
                "<tr class=\"instance\" data-id=\"{id}\"><td><code>{id}</code></td><td>{lid}</td>\
                 <td><span class=\"health health-{health}\">{health}</span></td>\
                 <td><code>{sha}</code>{cur}</td><td>{age}</td></tr>",
                id = esc(&i.id),
                lid = esc(i.logical_id.as_deref().unwrap_or("-")),
                sha = esc(&i.config_sha),
                cur = if i.current {
                    ""
                } else {
                    " <span class=\"outdated\">outdated</span>"
                },
                age = age(i.created_ms),
            );
        }
        out.push_str("</tbody></table><h3>Recent events</h3><ol class=\"events\">");
        for e in recent
            .iter()
            .rev()
            .filter(|e| e.group == v.id)
            .take(RECENT_EVENTS)
        {
            let _ = write!(
                out,
                "<li><span class=\"kind\">{kind}</span> {inst}<span class=\"message\">{msg}</span> <span class=\"age\">{age} ago</span></li>",
                kind = esc(&e.kind.to_string()),
                inst = e
                    .instance
                    .as_deref()
                    .map(|i| format!("<code>{}</code> ", esc(i)))
                    .unwrap_or_default(),
                msg = esc(&e.message),
                age = age(e.time_ms),
            );
        }
        out.push_str("</ol></section>\n");
    }

    out.push_str("<section id=\"plugins\"><h2>Plugins</h2><table><thead><tr><th>Plugin</th><th>Kind</th><th>Version</th><th>State</th><th>Grants</th><th>Source</th></tr></thead><tbody>");
    for p in super::types::plugin_rows(&d.registry) {
        let grants = super::types::plugin_detail(&d.registry, &p.name)
            .map(|v| {
                let g = v.granted;
                let mut parts: Vec<String> = Vec::new();
                parts.extend(g.files.iter().map(|f| format!("dir {f}")));
                parts.extend(g.http.iter().map(|h| format!("http {h}")));
                parts.extend(g.http_unix.iter().map(|u| format!("socket {u}")));
                if !g.http_rules.is_empty() {
                    parts.push(format!("{} request rule(s)", g.http_rules.len()));
                }
                parts.extend(g.http_signed.iter().map(|x| format!("signed {x}")));
                parts.extend(g.process.iter().map(|x| format!("exec {x}")));
                parts.extend(g.config.iter().map(|c| format!("config {c}")));
                if parts.is_empty() {
                    "scratch directory only".to_string()
                } else {
                    parts.join("; ")
                }
            })
            .unwrap_or_default();
        let state = format!("{:?}", p.status).to_lowercase();
        let _ = write!(
            out,
            "<tr><td>{name}</td><td>{kind}</td><td>{version}</td><td><span class=\"state state-{state}\">{state}</span>{err}</td><td class=\"grants\">{grants}</td><td>{source}</td></tr>",
            name = esc(&p.name),
            kind = esc(&p.kind.map(|k| k.to_string()).unwrap_or_default()),
            version = esc(p.version.as_deref().unwrap_or("")),
            err = p
                .error
                .as_deref()
                .map(|e| format!(" <span class=\"message\">{}</span>", esc(e)))
                .unwrap_or_default(),
            source = esc(&p.source),
            grants = esc(&grants),
        );
    }
    out.push_str("</tbody></table></section>\n");
    out
}

/// The login form of the TCP listener.
pub fn login_page(failed: bool) -> Response {
    let note = if failed {
        "<p class=\"alert\">That token is not the daemon's.</p>"
    } else {
        ""
    };
    html(
        StatusCode::UNAUTHORIZED,
        document(
            "infrakit: sign in",
            &format!(
                "<header><h1>infrakit</h1></header><main class=\"login\">{note}\
                 <form method=\"post\" action=\"/ui/login\"><label>Token \
                 <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label> \
                 <button type=\"submit\">Open</button></form>\
                 <p>The token is in the daemon's token file (<code>serve --token-file</code>).</p></main>"
            ),
        ),
    )
}

/// Sets the cookie and sends the browser to `/`.
pub fn signed_in(token: &str) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        let hostile = "<script>alert(1)</script><img src=x onerror=\"alert(2)\">'&\u{1b}[31m";
        let e = esc(hostile);
        assert!(!e.contains('<') && !e.contains('>') && !e.contains('"') && !e.contains('\''));
        assert!(e.contains("&lt;script&gt;") && e.contains("\\u{1b}"), "{e}");
    }
}
