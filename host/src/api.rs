//! The control API: HTTP + JSON, served on a unix socket (permissions 0600, no token) and
//! optionally on TCP (a bearer token required, compared in constant time). Every CLI command
//! that talks to the daemon is one of these endpoints; the OpenAPI document is generated from
//! the handlers and served at `/openapi.json`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::controller::Controller;
use crate::event::Event;
use crate::plugin::Registry;
use crate::spec::GroupSpec;
use crate::store::{self, Lifecycle, Store};

/// Largest request body accepted (a group spec is a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the handlers share.
pub struct Daemon {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The reconcile loop.
    pub controller: Controller,
    /// The plugins.
    pub registry: Arc<Registry>,
    /// Stored events, as they happen.
    pub events: broadcast::Sender<Event>,
    /// When the daemon started.
    pub started: Instant,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
    /// Turns true when the daemon is shutting down: open event streams end then, so that the
    /// server's graceful shutdown is not held open by a follower.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type AppState = Arc<Daemon>;

/// An error answer: a status and a JSON body `{"error": "..."}` naming what was wrong.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and where.
    pub error: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        let status = match e {
            store::Error::UnknownGroup(_) => StatusCode::NOT_FOUND,
            store::Error::NoEarlierRevision(_) | store::Error::BeingDestroyed(_) => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, crate::error_chain(&e))
    }
}

fn body_text(body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let bytes = body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than the limit of {MAX_BODY_BYTES} bytes")
        } else {
            e.body_text()
        };
        ApiError::new(status, message)
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "request body is not UTF-8"))
}

/// Daemon status.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct StatusResponse {
    /// infrakit's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// The data directory.
    pub data_dir: String,
    /// Managed groups.
    pub groups: usize,
    /// Loaded plugins.
    pub plugins: usize,
    /// Plugin files that failed to load.
    pub plugin_failures: usize,
    /// The sequence number of the newest event (follow from here with `/v1/events?after=`).
    pub last_event: u64,
}

/// A group as the API shows it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    /// The group id.
    pub id: String,
    /// The revision of its current spec.
    pub revision: u64,
    /// Managed or being destroyed.
    pub lifecycle: Lifecycle,
    /// The current spec.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// Where it stands as of its last pass.
    #[schema(value_type = Object)]
    pub status: Option<serde_json::Value>,
}

/// The answer to a commit.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CommitResponse {
    /// Whether the spec was stored and is being applied (false for a dry run).
    pub committed: bool,
    /// The new revision, when committed.
    pub revision: Option<u64>,
    /// The configuration hash of the spec.
    pub config_sha: String,
    /// What reconciling it does next, as of now (a preview; null when it could not be made).
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// Why there is no preview (observing the group failed, e.g. its plugin's API is down).
    /// The commit went through all the same: the controller retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_error: Option<String>,
}

#[derive(Deserialize, IntoParams)]
struct CommitQuery {
    /// Only show the plan; store nothing, change nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize, IntoParams)]
struct EventsQuery {
    /// Only events with a sequence number above this.
    #[serde(default)]
    after: u64,
    /// Only events of this group.
    group: Option<String>,
    /// Keep the response open and stream new events as they happen.
    #[serde(default)]
    follow: bool,
    /// At most this many past events (default 1000).
    limit: Option<usize>,
}

fn group_view(d: &Daemon, g: store::StoredGroup) -> GroupView {
    let status = d
        .controller
        .status(&g.spec.id)
        .and_then(|s| serde_json::to_value(s).ok());
    GroupView {
        id: g.spec.id.clone(),
        revision: g.revision,
        lifecycle: g.lifecycle,
        spec: serde_json::to_value(&g.spec).unwrap_or_default(),
        status,
    }
}

/// After a write of desired state: tells subscribers, and waits until the controller follows
/// it, so that what the writer reads next (`group ls`, `--wait`) is about its revision.
async fn announce(d: &Daemon, event: Event) {
    let _ = d.events.send(event);
    let generation = *d.store.watch().borrow();
    d.controller.applied(generation).await;
}

/// Daemon status.
#[utoipa::path(get, path = "/v1/status", responses((status = 200, body = StatusResponse)))]
async fn status(State(d): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_seconds: d.started.elapsed().as_secs(),
        data_dir: d.data_dir.display().to_string(),
        groups: d.store.groups()?.len(),
        plugins: d.registry.plugins().len(),
        plugin_failures: d.registry.failures().len(),
        last_event: d.store.last_event()?,
    }))
}

/// Every committed group with its status.
#[utoipa::path(get, path = "/v1/groups", responses((status = 200, body = Vec<GroupView>)))]
async fn list_groups(State(d): State<AppState>) -> Result<Json<Vec<GroupView>>, ApiError> {
    let groups = d.store.groups()?;
    Ok(Json(
        groups.into_iter().map(|g| group_view(&d, g)).collect(),
    ))
}

/// One group: spec, revision and status with its instances.
#[utoipa::path(get, path = "/v1/groups/{id}",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
async fn get_group(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let g = d
        .store
        .group(&id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no group {id:?}")))?;
    Ok(Json(group_view(&d, g)))
}

async fn parse_and_validate(d: &Daemon, text: &str) -> Result<GroupSpec, ApiError> {
    let spec = GroupSpec::parse(text, "request body", false)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, crate::error_chain(&e)))?;
    d.controller
        .validate(&spec)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, crate::error_chain(&e)))?;
    Ok(spec)
}

async fn parse_and_plan(
    d: &Daemon,
    text: &str,
) -> Result<(GroupSpec, serde_json::Value), ApiError> {
    let spec = parse_and_validate(d, text).await?;
    let plan = d
        .controller
        .plan(&spec)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, crate::error_chain(&e)))?;
    Ok((spec, serde_json::to_value(plan).unwrap_or_default()))
}

/// Commit a group spec (JSON or YAML): validate it, store it as a new revision and reconcile
/// towards it. With `dry_run=true`, only answer with the plan.
#[utoipa::path(post, path = "/v1/groups", params(CommitQuery),
    request_body(content = Object, description = "A group spec (see `infrakit group schema`)"),
    responses((status = 200, body = CommitResponse), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn commit_group(
    State(d): State<AppState>,
    Query(q): Query<CommitQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CommitResponse>, ApiError> {
    let text = body_text(body)?;
    let spec = parse_and_validate(&d, &text).await?;
    let preview = d.controller.plan(&spec).await;
    let config_sha = spec.config_sha();
    if q.dry_run {
        // The preview is the whole answer of a dry run.
        let plan =
            preview.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, crate::error_chain(&e)))?;
        return Ok(Json(CommitResponse {
            committed: false,
            revision: None,
            config_sha,
            plan: serde_json::to_value(plan).unwrap_or_default(),
            plan_error: None,
        }));
    }
    // A fix must be committable while the plugin's API is down: the preview is only that.
    let (plan, plan_error) = match preview {
        Ok(p) => (serde_json::to_value(p).unwrap_or_default(), None),
        Err(e) => (serde_json::Value::Null, Some(crate::error_chain(&e))),
    };
    let (stored, event) = d.store.commit(
        &spec,
        Event::now(
            &spec.id,
            crate::event::EventKind::GroupCommitted,
            None,
            format!("committed (config {config_sha}, {} instances)", spec.size()),
        ),
    )?;
    announce(&d, event).await;
    Ok(Json(CommitResponse {
        committed: true,
        revision: Some(stored.revision),
        config_sha,
        plan,
        plan_error,
    }))
}

/// What committing a spec would do now (same as a dry-run commit).
#[utoipa::path(post, path = "/v1/plan",
    request_body(content = Object, description = "A group spec"),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
async fn plan_group(
    State(d): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let text = body_text(body)?;
    let (_, plan) = parse_and_plan(&d, &text).await?;
    Ok(Json(plan))
}

/// A group's revisions, oldest first.
#[utoipa::path(get, path = "/v1/groups/{id}/history",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn history(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let revisions = d.store.history(&id)?;
    if revisions.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no group {id:?}"),
        ));
    }
    Ok(Json(serde_json::to_value(revisions).unwrap_or_default()))
}

/// Make the previous configuration current again (as a new revision).
#[utoipa::path(post, path = "/v1/groups/{id}/rollback",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = CommitResponse), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn rollback(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CommitResponse>, ApiError> {
    let (stored, event) = d.store.rollback(&id)?;
    announce(&d, event).await;
    let plan = d
        .controller
        .plan(&stored.spec)
        .await
        .map(|p| serde_json::to_value(p).unwrap_or_default())
        .unwrap_or_default();
    let config_sha = stored.spec.config_sha();
    Ok(Json(CommitResponse {
        committed: true,
        revision: Some(stored.revision),
        config_sha,
        plan,
        plan_error: None,
    }))
}

/// Stop managing a group; its instances are left as they are.
#[utoipa::path(post, path = "/v1/groups/{id}/free",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn free(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let event = d.store.forget(
        &id,
        Event::now(
            &id,
            crate::event::EventKind::GroupFreed,
            None,
            "no longer managed; instances left as they are",
        ),
    )?;
    announce(&d, event).await;
    // Nothing more happens to the group once this answers.
    d.controller.stopped(&id).await;
    Ok(Json(serde_json::json!({ "freed": id })))
}

/// Drain and destroy every instance of a group, then forget it.
#[utoipa::path(post, path = "/v1/groups/{id}/destroy",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn destroy(
    State(d): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, event) = d.store.mark_destroying(
        &id,
        Event::now(
            &id,
            crate::event::EventKind::Planned,
            None,
            "destroy requested: draining and destroying every instance",
        ),
    )?;
    announce(&d, event).await;
    Ok(Json(serde_json::json!({ "destroying": id })))
}

/// Past events, and with `follow=true` new ones as they happen: one JSON object per line.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, description = "JSON lines, one event each", content_type = "application/x-ndjson")))]
async fn events(
    State(d): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    // Subscribe before reading the log, so nothing falls between the two.
    let live = d.events.subscribe();
    let past = d
        .store
        .events(q.after, q.group.as_deref(), q.limit.unwrap_or(1000))?;
    let last = past.last().map(|e| e.seq).unwrap_or(q.after);
    let line = |e: &Event| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        Ok::<Bytes, Infallible>(Bytes::from(s))
    };
    let backlog = tokio_stream::iter(past.iter().map(line).collect::<Vec<_>>());
    let body = if q.follow {
        let group = q.group.clone();
        let new = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |e| {
            let e = e.ok()?;
            (e.seq > last && group.as_ref().is_none_or(|g| *g == e.group)).then(|| line(&e))
        });
        let mut stopping = d.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        Body::from_stream(futures_util::StreamExt::take_until(
            backlog.chain(new),
            stopped,
        ))
    } else {
        Body::from_stream(backlog)
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Every plugin, with load failures.
#[utoipa::path(get, path = "/v1/plugins", responses((status = 200, body = Object)))]
async fn plugins(State(d): State<AppState>) -> Json<serde_json::Value> {
    Json(crate::cli::plugin_rows(&d.registry))
}

/// One plugin: metadata, asked-for versus granted.
#[utoipa::path(get, path = "/v1/plugins/{name}",
    params(("name" = String, Path, description = "The plugin name")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
async fn plugin(
    State(d): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::cli::plugin_inspect(&d.registry, &name)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}")))
}

/// The JSON Schema of group specs.
#[utoipa::path(get, path = "/v1/schema/group", responses((status = 200, body = Object)))]
async fn schema() -> Json<serde_json::Value> {
    Json(GroupSpec::schema())
}

#[derive(OpenApi)]
#[openapi(info(title = "infrakit", description = "The infrakit daemon's control API"))]
struct ApiDoc;

/// The routes and their OpenAPI document.
pub fn router(daemon: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(list_groups, commit_group))
        .routes(routes!(get_group))
        .routes(routes!(plan_group))
        .routes(routes!(history))
        .routes(routes!(rollback))
        .routes(routes!(free))
        .routes(routes!(destroy))
        .routes(routes!(events))
        .routes(routes!(plugins))
        .routes(routes!(plugin))
        .routes(routes!(schema))
        .with_state(daemon)
        .split_for_parts();
    let doc = api.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    (router, api)
}

/// Requires `Authorization: Bearer <token>` (TCP listener), compared in constant time.
pub async fn require_token(token: Arc<String>, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required on the TCP listener (Authorization: Bearer <token>)",
        )
        .into_response();
    }
    next.run(req).await
}
