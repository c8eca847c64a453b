//! The control API: HTTP + JSON, served on a unix socket (permissions 0600, no token) and
//! optionally on TCP (a bearer token required, compared in constant time). Every CLI command
//! that talks to the daemon is one of these endpoints, with the types of [`types`]; the OpenAPI
//! document is generated from the handlers and served at `/openapi.json`.
//!
//! Status codes: 400 for a request that is not what the document describes (syntax, types,
//! query strings), 422 for a well-formed spec that is refused (a rule across fields, an unknown
//! plugin, properties the plugin rejects), 404 for an unknown group or plugin, 409 for a state
//! conflict, 502 when a plan cannot be made because observing the group failed.

mod openapi;
pub mod types;
pub mod ui;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::controller::Controller;
use crate::event::{Event, EventKind};
use crate::plan::Plan;
use crate::plugin::Registry;
use crate::spec::{self, GroupSpec};
use crate::store::{self, Revision, Store};
pub use types::*;

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
    /// With several managers on etcd: this one's part in the election.
    pub elector: Option<Arc<crate::leader::Elector>>,
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
            store::Error::NoEarlierRevision(_)
            | store::Error::NoSuchRevision { .. }
            | store::Error::BeingDestroyed(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, crate::error_chain(&e))
    }
}

impl From<spec::Error> for ApiError {
    fn from(e: spec::Error) -> Self {
        // Not what the schema describes: 400. Well-formed but breaking a rule the schema cannot
        // express (exactly one of Size and LogicalIDs, say): 422.
        let status = match e {
            spec::Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, crate::error_chain(&e))
    }
}

/// Query-string and path errors answer in the JSON error shape, not axum's plain text.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query string: {}", e.body_text()),
        )
    })
}

fn path(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(p)| p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("path: {}", e.body_text())))
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

/// After a write of desired state: tells subscribers, and waits until the controller follows
/// it, so that what the writer reads next (`group ls`, `--wait`) is about its revision.
async fn announce(d: &Daemon, event: Event) {
    let _ = d.events.send(event);
    let generation = *d.store.watch().borrow();
    d.controller.applied(generation).await;
}

fn group_view(
    d: &Daemon,
    published: &HashMap<String, serde_json::Value>,
    g: store::StoredGroup,
) -> GroupView {
    let status = d.controller.status(&g.spec.id).or_else(|| {
        published
            .get(&g.spec.id)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    });
    GroupView {
        id: g.spec.id.clone(),
        revision: g.revision,
        lifecycle: g.lifecycle,
        status,
        spec: g.spec,
    }
}

/// On a manager that does not lead, the statuses the leader published (none otherwise: the
/// controller here has them).
async fn published(d: &Daemon) -> Result<HashMap<String, serde_json::Value>, ApiError> {
    let leading = d
        .elector
        .as_ref()
        .is_none_or(|e| e.leading().borrow().is_some());
    if leading {
        return Ok(HashMap::new());
    }
    Ok(d.store.published_statuses().await?)
}

/// A preview, or why there is none: a commit goes through either way.
fn split_preview(
    preview: Result<Plan, crate::controller::Error>,
) -> (Option<Plan>, Option<String>) {
    match preview {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(crate::error_chain(&e))),
    }
}

fn no_group(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no group {id:?}"))
}

/// Daemon status.
#[utoipa::path(get, path = "/v1/status", operation_id = "status",
    responses((status = 200, body = StatusResponse)))]
async fn status(State(d): State<AppState>) -> Result<Json<StatusResponse>, ApiError> {
    // Status answers even when the store cannot (etcd without quorum): its figures are then
    // absent and the reason is shown.
    let bound = Duration::from_secs(1);
    let counts = async {
        let groups = d.store.groups().await?.len();
        let last = d.store.last_event().await?;
        Ok::<_, crate::store::Error>((groups, last))
    };
    let (groups, last_event, store_error) = match tokio::time::timeout(bound, counts).await {
        Ok(Ok((g, l))) => (Some(g), Some(l), None),
        Ok(Err(e)) => (None, None, Some(crate::error_chain(&e))),
        Err(_) => (None, None, Some(format!("no answer within {bound:?}"))),
    };
    Ok(Json(StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_seconds: d.started.elapsed().as_secs(),
        data_dir: d.data_dir.display().to_string(),
        groups,
        plugins: d.registry.plugins().len(),
        plugin_failures: d.registry.failures().len(),
        last_event,
        store_error,
        store: d.store.location(),
        leadership: match &d.elector {
            Some(e) => Some(e.status().await),
            None => None,
        },
    }))
}

/// Every committed group with its status.
#[utoipa::path(get, path = "/v1/groups", operation_id = "list_groups",
    responses((status = 200, body = Vec<GroupView>)))]
async fn list_groups(State(d): State<AppState>) -> Result<Json<Vec<GroupView>>, ApiError> {
    let groups = d.store.groups().await?;
    let published = published(&d).await?;
    Ok(Json(
        groups
            .into_iter()
            .map(|g| group_view(&d, &published, g))
            .collect(),
    ))
}

/// One group: spec, revision and status with its instances.
#[utoipa::path(get, path = "/v1/groups/{id}", operation_id = "get_group",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn get_group(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<GroupView>, ApiError> {
    let id = path(id)?;
    let g = d.store.group(&id).await?.ok_or_else(|| no_group(&id))?;
    let published = published(&d).await?;
    Ok(Json(group_view(&d, &published, g)))
}

async fn parse_and_validate(d: &Daemon, text: &str) -> Result<GroupSpec, ApiError> {
    // Parsing (a megabyte of YAML takes a while in a debug build) runs off the threads that
    // serve the API and drive the controller.
    let owned = text.to_string();
    let spec = tokio::task::spawn_blocking(move || GroupSpec::parse(&owned, "request body", false))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("parsing the spec: {e}"),
            )
        })??;
    d.controller
        .validate(&spec)
        .await
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, crate::error_chain(&e)))?;
    Ok(spec)
}

/// Commit a group spec (JSON, or YAML): validate it, store it as a new revision and reconcile
/// towards it. With `dry_run=true`, only answer with the plan. The plan is a preview: when it
/// cannot be made (the instance plugin cannot list), the commit goes through all the same.
#[utoipa::path(post, path = "/v1/groups", operation_id = "commit_group", params(CommitQuery),
    request_body(content = GroupSpec, description = "A group spec (also accepted as YAML)"),
    responses((status = 200, body = CommitResponse), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn commit_group(
    State(d): State<AppState>,
    q: Result<Query<CommitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CommitResponse>, ApiError> {
    let q = query(q)?;
    let text = body_text(body)?;
    let spec = parse_and_validate(&d, &text).await?;
    let current = d.store.group(&spec.id).await?.map(|g| g.spec);
    let preview = d.controller.plan(&spec, current.as_ref()).await;
    let config_sha = spec.config_sha();
    if q.dry_run {
        // The preview is the whole answer of a dry run.
        let plan =
            preview.map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, crate::error_chain(&e)))?;
        return Ok(Json(CommitResponse {
            id: spec.id,
            committed: false,
            revision: None,
            config_sha,
            plan: Some(plan),
            plan_error: None,
        }));
    }
    // A fix must be committable while the plugin's API is down: the preview is only that.
    let (plan, plan_error) = split_preview(preview);
    let (stored, event) = d
        .store
        .commit(
            &spec,
            Event::now(
                &spec.id,
                EventKind::GroupCommitted,
                None,
                format!("committed (config {config_sha}, {} instances)", spec.size()),
            ),
        )
        .await?;
    announce(&d, event).await;
    Ok(Json(CommitResponse {
        id: spec.id,
        committed: true,
        revision: Some(stored.revision),
        config_sha,
        plan,
        plan_error,
    }))
}

/// What committing a spec would do now (same as a dry-run commit).
#[utoipa::path(post, path = "/v1/plan", operation_id = "plan_group",
    request_body(content = GroupSpec, description = "A group spec (also accepted as YAML)"),
    responses((status = 200, body = Plan), (status = 400, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn plan_group(
    State(d): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Plan>, ApiError> {
    let text = body_text(body)?;
    let spec = parse_and_validate(&d, &text).await?;
    let current = d.store.group(&spec.id).await?.map(|g| g.spec);
    let plan = d
        .controller
        .plan(&spec, current.as_ref())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, crate::error_chain(&e)))?;
    Ok(Json(plan))
}

/// A group's revisions, oldest first.
#[utoipa::path(get, path = "/v1/groups/{id}/history", operation_id = "history",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Vec<Revision>), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn history(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Revision>>, ApiError> {
    let id = path(id)?;
    let revisions = d.store.history(&id).await?;
    if revisions.is_empty() {
        return Err(no_group(&id));
    }
    Ok(Json(revisions))
}

/// Make the previous configuration current again, as a new revision.
#[utoipa::path(post, path = "/v1/groups/{id}/rollback", operation_id = "rollback",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = CommitResponse), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rollback(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CommitResponse>, ApiError> {
    let id = path(id)?;
    rolled_back(&d, &id, None).await
}

/// Make the configuration of one revision (see the history) current again, as a new revision.
#[utoipa::path(post, path = "/v1/groups/{id}/revisions/{revision}/rollback",
    operation_id = "rollback_to",
    params(("id" = String, Path, description = "The group id"),
           ("revision" = u64, Path, description = "The revision to go back to")),
    responses((status = 200, body = CommitResponse), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rollback_to(
    State(d): State<AppState>,
    p: Result<Path<(String, u64)>, PathRejection>,
) -> Result<Json<CommitResponse>, ApiError> {
    let Path((id, revision)) =
        p.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("path: {}", e.body_text())))?;
    rolled_back(&d, &id, Some(revision)).await
}

async fn rolled_back(
    d: &AppState,
    id: &str,
    to: Option<u64>,
) -> Result<Json<CommitResponse>, ApiError> {
    let before = d.store.group(id).await?.map(|g| g.spec);
    let (stored, event) = d.store.rollback(id, to).await?;
    announce(d, event).await;
    let (plan, plan_error) = split_preview(d.controller.plan(&stored.spec, before.as_ref()).await);
    Ok(Json(CommitResponse {
        config_sha: stored.spec.config_sha(),
        id: stored.spec.id,
        committed: true,
        revision: Some(stored.revision),
        plan,
        plan_error,
    }))
}

/// Stop managing a group; its instances are left as they are.
#[utoipa::path(post, path = "/v1/groups/{id}/free", operation_id = "free",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Freed), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn free(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Freed>, ApiError> {
    let id = path(id)?;
    let event = d
        .store
        .forget(
            &id,
            Event::now(
                &id,
                EventKind::GroupFreed,
                None,
                "no longer managed; instances left as they are",
            ),
        )
        .await?;
    announce(&d, event).await;
    // Nothing more happens to the group once this answers.
    d.controller.stopped(&id).await;
    Ok(Json(Freed { freed: id }))
}

/// Drain and destroy every instance of a group, then forget it.
#[utoipa::path(post, path = "/v1/groups/{id}/destroy", operation_id = "destroy",
    params(("id" = String, Path, description = "The group id")),
    responses((status = 200, body = Destroying), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn destroy(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Destroying>, ApiError> {
    let id = path(id)?;
    let (_, event) = d
        .store
        .mark_destroying(
            &id,
            Event::now(
                &id,
                EventKind::Planned,
                None,
                "destroy requested: draining and destroying every instance",
            ),
        )
        .await?;
    announce(&d, event).await;
    Ok(Json(Destroying { destroying: id }))
}

/// The most instances one request may name.
const MAX_NAMED_INSTANCES: usize = 1000;

/// A JSON request body of type `T`, or 400 naming what is wrong.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let text = body_text(body)?;
    serde_json::from_str(&text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

/// The instance ids of a request: at least one, at most [`MAX_NAMED_INSTANCES`], each once.
fn named_instances(ids: Vec<String>) -> Result<Vec<String>, ApiError> {
    let mut seen = std::collections::HashSet::new();
    let ids: Vec<String> = ids.into_iter().filter(|i| seen.insert(i.clone())).collect();
    if ids.is_empty() || ids.len() > MAX_NAMED_INSTANCES {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`instances`: name 1 to {MAX_NAMED_INSTANCES} instance ids"),
        ));
    }
    Ok(ids)
}

/// A group that is managed (not being destroyed), or why not.
async fn managed_group(d: &Daemon, id: &str) -> Result<store::StoredGroup, ApiError> {
    let g = d.store.group(id).await?.ok_or_else(|| no_group(id))?;
    if g.lifecycle != store::Lifecycle::Managed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("group {id:?} is being destroyed"),
        ));
    }
    Ok(g)
}

/// A controller's refusal of an operation on named instances.
fn member_error(e: crate::controller::Error) -> ApiError {
    let status = match e {
        // The group exists; the request names instances it does not have.
        crate::controller::Error::NotMember { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, crate::error_chain(&e))
}

/// Drain and destroy named instances of a group. Without `decrement` each is replaced; with
/// it the group shrinks by as many, as a new revision (pets lose their logical ids). The
/// instances are marked through their tags first, so the controller removes exactly them
/// (and nothing in their place while the smaller revision lands).
#[utoipa::path(post, path = "/v1/groups/{id}/destroy-instances", operation_id = "destroy_instances",
    params(("id" = String, Path, description = "The group id")),
    request_body(content = DestroyInstancesRequest),
    responses((status = 200, body = InstancesChanged), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn destroy_instances(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InstancesChanged>, ApiError> {
    let id = path(id)?;
    let req: DestroyInstancesRequest = json_body(body)?;
    let ids = named_instances(req.instances)?;
    let g = managed_group(&d, &id).await?;
    // Checked before anything is marked: an empty list of pets is not a group (`Size: 0` or
    // `group destroy` is).
    if req.decrement
        && let Some(lids) = &g.spec.properties.allocation.logical_ids
        && ids.len() >= lids.len()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "removing {} of {} pets with --decrement would leave no logical ids; destroy \
                 the group instead",
                ids.len(),
                lids.len()
            ),
        ));
    }
    let mark = if req.decrement {
        spec::tags::REMOVE_DECREMENT
    } else {
        spec::tags::REMOVE_REPLACE
    };
    let labels = [(spec::tags::REMOVE.to_string(), mark.to_string())].into();
    let described = d
        .controller
        .label_members(&g.spec, &ids, &labels)
        .await
        .map_err(member_error)?;
    let list = ids.join(", ");
    if !req.decrement {
        let event = d
            .store
            .append(Event::now(
                &id,
                EventKind::InstanceLabelled,
                None,
                format!("removal requested: {list} (each replaced)"),
            ))
            .await?;
        announce(&d, event).await;
        return Ok(Json(InstancesChanged {
            id,
            instances: ids,
            revision: None,
            size: g.spec.size(),
        }));
    }
    let mut spec = g.spec.clone();
    let allocation = &mut spec.properties.allocation;
    match &mut allocation.logical_ids {
        Some(lids) => {
            let gone: Vec<String> = described
                .iter()
                .filter_map(|d| {
                    d.logical_id
                        .clone()
                        .or_else(|| d.tags.get(spec::tags::LOGICAL_ID).cloned())
                })
                .collect();
            lids.retain(|l| !gone.contains(l));
        }
        None => {
            let size = allocation.size.unwrap_or(0);
            allocation.size = Some(size.saturating_sub(ids.len() as u32));
        }
    }
    let (stored, event) = d
        .store
        .commit(
            &spec,
            Event::now(
                &id,
                EventKind::GroupCommitted,
                None,
                format!(
                    "destroy-instances --decrement {list}: {} to {} instances",
                    g.spec.size(),
                    spec.size()
                ),
            ),
        )
        .await?;
    announce(&d, event).await;
    Ok(Json(InstancesChanged {
        id,
        instances: ids,
        revision: Some(stored.revision),
        size: stored.spec.size(),
    }))
}

/// Protect named instances of a group from scale-in and from a rolling update's removals
/// (kept in their tags: it survives restarts and every manager sees it).
#[utoipa::path(post, path = "/v1/groups/{id}/protect", operation_id = "protect",
    params(("id" = String, Path, description = "The group id")),
    request_body(content = InstancesRequest),
    responses((status = 200, body = InstancesChanged), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn protect(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InstancesChanged>, ApiError> {
    set_protection(&d, path(id)?, json_body(body)?, true).await
}

/// Lift the protection of named instances of a group.
#[utoipa::path(post, path = "/v1/groups/{id}/unprotect", operation_id = "unprotect",
    params(("id" = String, Path, description = "The group id")),
    request_body(content = InstancesRequest),
    responses((status = 200, body = InstancesChanged), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 502, body = ErrorBody)))]
async fn unprotect(
    State(d): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<InstancesChanged>, ApiError> {
    set_protection(&d, path(id)?, json_body(body)?, false).await
}

async fn set_protection(
    d: &AppState,
    id: String,
    req: InstancesRequest,
    on: bool,
) -> Result<Json<InstancesChanged>, ApiError> {
    let ids = named_instances(req.instances)?;
    let g = managed_group(d, &id).await?;
    // Labels only merge, so unprotecting writes "false" rather than removing the tag.
    let labels = [(spec::tags::PROTECTED.to_string(), on.to_string())].into();
    d.controller
        .label_members(&g.spec, &ids, &labels)
        .await
        .map_err(member_error)?;
    let what = if on { "protected" } else { "unprotected" };
    let event = d
        .store
        .append(Event::now(
            &id,
            EventKind::InstanceLabelled,
            None,
            format!("{what}: {}", ids.join(", ")),
        ))
        .await?;
    announce(d, event).await;
    Ok(Json(InstancesChanged {
        id,
        instances: ids,
        revision: None,
        size: g.spec.size(),
    }))
}

/// The newest `tail` events (of `group`), oldest first, and the sequence number they follow:
/// windows of the log further and further back until they hold enough (the log keeps at most
/// 100,000, so this ends).
async fn newest(
    store: &dyn crate::store::Store,
    group: Option<&str>,
    tail: usize,
) -> Result<(Vec<Event>, u64), ApiError> {
    let last = store.last_event().await?;
    let mut window = (tail as u64).max(256);
    loop {
        let after = last.saturating_sub(window);
        let got = store
            .events(after, group, window.min(100_000) as usize)
            .await?;
        if got.len() >= tail || after == 0 || window >= 100_000 {
            let from = got.len().saturating_sub(tail);
            return Ok((got[from..].to_vec(), last));
        }
        window = window.saturating_mul(4);
    }
}

/// Past events, and with `follow=true` new ones as they happen: one JSON event per line. A
/// followed stream ends only when the client goes or the daemon stops.
#[utoipa::path(get, path = "/v1/events", operation_id = "events", params(EventsQuery),
    responses((status = 200, description = "JSON lines, one event each (a stream with `follow=true`)",
                body = Event, content_type = "application/x-ndjson"),
              (status = 400, body = ErrorBody)))]
async fn events(
    State(d): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(1000);
    if limit > 100_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("query string: limit {limit} is above 100000 (the events kept)"),
        ));
    }
    // The document says int64, as most clients read numbers: larger values are refused.
    for (name, value) in [("after", Some(q.after)), ("since_ms", q.since_ms)] {
        if value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query string: {name} is above {}", i64::MAX),
            ));
        }
    }
    if q.tail.is_some_and(|t| t > 100_000) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "query string: tail is above 100000 (the events kept)",
        ));
    }
    // Subscribe before reading the log, so nothing falls between the two.
    let live = d.events.subscribe();
    let (past, after) = match q.tail {
        Some(tail) => newest(d.store.as_ref(), q.group.as_deref(), tail as usize).await?,
        None => (
            d.store
                .events(q.after, q.group.as_deref(), limit as usize)
                .await?,
            q.after,
        ),
    };
    let last = past.last().map(|e| e.seq).unwrap_or(after);
    let mut past = past;
    if let Some(since) = q.since_ms {
        past.retain(|e| e.time_ms >= since);
    }
    let line = |e: &Event| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        Ok::<Bytes, Infallible>(Bytes::from(s))
    };
    let backlog = tokio_stream::iter(past.iter().map(line).collect::<Vec<_>>());
    let body = if q.follow {
        // New events are read from the store, in sequence order, whenever this manager
        // records one, and with a shared store also every half second: another manager (the
        // leader) records most of them there.
        let shared = d.elector.is_some();
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(1024);
        let store = d.store.clone();
        let group = q.group.clone();
        let mut stopping = d.stopping.clone();
        let mut live = live;
        tokio::spawn(async move {
            let mut last = last;
            loop {
                let fresh = match store.events(last, group.as_deref(), 1000).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "event stream: cannot read the store");
                        Vec::new()
                    }
                };
                let full = fresh.len() == 1000;
                for e in fresh {
                    last = e.seq;
                    if tx.send(e).await.is_err() {
                        return; // the client went
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    r = live.recv() => {
                        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)), if shared => {}
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        let new = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |e| line(&e));
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

/// Every plugin: loaded, loading, and files that failed to load.
#[utoipa::path(get, path = "/v1/plugins", operation_id = "plugins",
    responses((status = 200, body = Vec<PluginRow>)))]
async fn plugins(State(d): State<AppState>) -> Json<Vec<PluginRow>> {
    Json(plugin_rows(&d.registry))
}

/// One plugin: metadata, asked-for versus granted.
#[utoipa::path(get, path = "/v1/plugins/{name}", operation_id = "plugin",
    params(("name" = String, Path, description = "The plugin name")),
    responses((status = 200, body = PluginDetail), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
async fn plugin(
    State(d): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<PluginDetail>, ApiError> {
    let name = path(name)?;
    plugin_detail(&d.registry, &name)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))
}

/// The JSON Schema of group specs (the `GroupSpec` schema of this document, standalone).
#[utoipa::path(get, path = "/v1/schema/group", operation_id = "group_schema",
    responses((status = 200, description = "A JSON Schema (draft 2020-12)", body = Object)))]
async fn schema() -> Json<serde_json::Value> {
    Json(GroupSpec::schema())
}

#[derive(OpenApi)]
#[openapi(info(title = "infrakit", description = "The infrakit daemon's control API"))]
struct ApiDoc;

fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(list_groups, commit_group))
        .routes(routes!(get_group))
        .routes(routes!(plan_group))
        .routes(routes!(history))
        .routes(routes!(rollback))
        .routes(routes!(rollback_to))
        .routes(routes!(free))
        .routes(routes!(destroy))
        .routes(routes!(destroy_instances))
        .routes(routes!(protect))
        .routes(routes!(unprotect))
        .routes(routes!(events))
        .routes(routes!(plugins))
        .routes(routes!(plugin))
        .routes(routes!(schema))
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi_document() -> serde_json::Value {
    let (_, api) = routes().split_for_parts();
    openapi::document(api)
}

/// The routes, and their OpenAPI document as served at `/openapi.json`.
pub fn router(daemon: AppState) -> (axum::Router, serde_json::Value) {
    let (router, api) = routes().with_state(daemon.clone()).split_for_parts();
    let doc = Arc::new(openapi::document(api));
    let served = doc.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = served.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .merge(ui::routes().with_state(daemon.clone()))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /openapi.json")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    (router, doc.as_ref().clone())
}

/// Requires `Authorization: Bearer <token>` (TCP listener), compared in constant time. The
/// status page's own `GET`s may carry the token in its cookie instead (set by `/?token=` or the
/// login form; see `ui`), never the API's.
pub async fn require_token(token: Arc<String>, req: Request, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    let valid = |given: &str| {
        given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    };
    let path = req.uri().path().to_string();
    if req.method() == axum::http::Method::POST && path == "/ui/login" {
        let body = axum::body::to_bytes(req.into_body(), 4096)
            .await
            .unwrap_or_default();
        let given = form_value(&String::from_utf8_lossy(&body), "token").unwrap_or_default();
        return if valid(&given) {
            ui::signed_in(&given)
        } else {
            ui::login_page(true)
        };
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if valid(bearer) {
        return next.run(req).await;
    }
    let page = ui::is_page_path(&path)
        && matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
    if page {
        let cookie = req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == ui::COOKIE)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        if valid(&cookie) {
            return next.run(req).await;
        }
        if path == "/"
            && let Some(given) = req.uri().query().and_then(|q| form_value(q, "token"))
            && valid(&given)
        {
            // Trade the token in the address for a cookie, and take it out of the address.
            return ui::signed_in(&given);
        }
        if path == "/" {
            return ui::login_page(false);
        }
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a bearer token is required on the TCP listener (Authorization: Bearer <token>)",
    )
    .into_response()
}

/// The value of `key` in `a=1&key=v` (form or query encoding).
fn form_value(text: &str, key: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(&v.replace('+', " ")))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s.get(i + 1..i + 3).filter(|_| bytes[i] == b'%');
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
