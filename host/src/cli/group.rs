//! `infrakit group ...` in the foreground: reconcile a spec file until interrupted, show what a
//! spec would do, destroy a group's instances, print the spec's JSON Schema.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::Cli;
use super::client::Refused;
use super::output::{self, Format};
use crate::api::{CommitResponse, Destroying, Freed, GroupView, InstancesChanged, StatusResponse};
use crate::controller::GroupStatus;
use crate::controller::{Controller, EventSink, Options};
use crate::event::{Event, EventKind};
use crate::plan::{Phase, Plan, Step};
use crate::spec::GroupSpec;
use crate::store::{EmbeddedStore, Store};
use crate::store::{Lifecycle, Revision};

/// Group commands. `commit`, `ls`, `describe`, `history`, `rollback` and `free` talk to the
/// daemon; `plan` and `destroy` do too when one is running, and work in the foreground
/// otherwise; `run` reconciles one group in the foreground.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Commit a spec to the daemon: show the plan, then store and apply it.
    Commit {
        /// The group spec (JSON or YAML; `-` for stdin).
        spec: PathBuf,
        /// Only show the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        wait: WaitArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// List the committed groups.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show a group: phase, and each instance with health, configuration, logical id and age.
    Describe {
        /// The group id.
        id: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show a group's revisions (`--diff`: what each changed; `--diff REV`: what that one
    /// changed).
    History {
        /// The group id.
        id: String,
        /// Show the fields each revision changed from the one before it (or only REV's).
        #[arg(long, value_name = "REV", num_args = 0..=1, default_missing_value = "0")]
        diff: Option<u64>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Make the previous configuration current again (or that of `--to REVISION`), as a new
    /// revision.
    Rollback {
        /// The group id.
        id: String,
        /// The revision to go back to (see `group history`).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set a group's number of cattle (a new revision, like `kubectl scale`); 0 keeps the
    /// group managed with no instances.
    Scale {
        /// The group id.
        id: String,
        /// The new `Allocation.Size`.
        size: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Drain and destroy named instances of a group. Without `--decrement` each is replaced;
    /// with it the group shrinks by as many (a new revision; pets lose their logical ids).
    DestroyInstances {
        /// The group id.
        id: String,
        /// Instance ids, as `group describe` shows them.
        #[arg(required = true)]
        instances: Vec<String>,
        /// Shrink the group instead of replacing them.
        #[arg(long)]
        decrement: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Protect instances from scale-in and from a rolling update's removals (kept in their
    /// tags: it survives restarts, and every manager sees it).
    Protect {
        /// The group id.
        id: String,
        /// Instance ids, as `group describe` shows them.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Lift the protection of instances.
    Unprotect {
        /// The group id.
        id: String,
        /// Instance ids, as `group describe` shows them.
        #[arg(required = true)]
        instances: Vec<String>,
    },
    /// Stop managing a group; leave its instances as they are.
    Free {
        /// The group id.
        id: String,
    },
    /// Reconcile a group in the foreground until interrupted. The spec file is re-read when it
    /// changes, so editing it scales or rolls the group.
    Run {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
        /// How often the group is observed when nothing is happening.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        poll_interval: Duration,
    },
    /// Show what reconciling a spec would do now, and do nothing (a dry run).
    Plan {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Check a spec: syntax, fields, and its plugins' verdict on their properties.
    Validate {
        /// The group spec (JSON or YAML).
        spec: PathBuf,
    },
    /// Drain and destroy every instance of a group, then forget it. Without a daemon, give
    /// the spec file and it is done in the foreground.
    Destroy {
        /// The group id (or, without a daemon, its spec file).
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the JSON Schema of group specs.
    Schema,
}

/// `--wait` for long operations.
#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Follow the operation until the group converges (or is gone); exit 3 if it pauses.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 6).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Exit code of `--wait` when the operation paused.
pub const EXIT_PAUSED: u8 = 3;
/// Exit code of `--wait` when it timed out.
pub const EXIT_TIMEOUT: u8 = 6;

/// Prints events as they happen.
struct Printer;

impl EventSink for Printer {
    fn record(&self, event: Event) {
        println!("{event}");
    }

    fn stored(&self, event: Event) {
        println!("{event}");
    }
}

/// A controller in the foreground: its desired state lives in memory, written through the same
/// store interface the daemon's API writes through.
fn foreground(
    registry: Arc<crate::plugin::Registry>,
    options: Options,
) -> anyhow::Result<(Controller, Arc<EmbeddedStore>)> {
    let store = Arc::new(EmbeddedStore::in_memory()?);
    let controller = Controller::new(registry, store.clone(), Arc::new(Printer), options);
    Ok((controller, store))
}

/// Stores a spec as the next revision, prints its event, and waits until the controller
/// follows it.
async fn commit_foreground(
    controller: &Controller,
    store: &EmbeddedStore,
    spec: &GroupSpec,
) -> anyhow::Result<()> {
    let (_, event) = store
        .commit(
            spec,
            Event::now(
                &spec.id,
                EventKind::GroupCommitted,
                None,
                format!(
                    "committed (config {}, {} instances)",
                    spec.config_sha(),
                    spec.size()
                ),
            ),
        )
        .await?;
    println!("{event}");
    controller.applied(*store.watch().borrow()).await;
    Ok(())
}

async fn load_spec(path: &Path) -> anyhow::Result<GroupSpec> {
    Ok(GroupSpec::load(path)?)
}

/// `group history --diff [REV]`: each revision's changes from the one before it (revision 0:
/// all of them).
fn print_history_diff(h: &[Revision], only: u64, format: Format) -> anyhow::Result<ExitCode> {
    if only != 0 && !h.iter().any(|r| r.revision == only) {
        let kept: Vec<String> = h.iter().map(|r| r.revision.to_string()).collect();
        anyhow::bail!(
            "revision {only} is not in the history (kept: {})",
            kept.join(", ")
        );
    }
    #[derive(serde::Serialize)]
    struct RevisionDiff<'a> {
        revision: u64,
        cause: &'a str,
        changes: Vec<crate::diff::SpecChange>,
    }
    let diffs: Vec<RevisionDiff> = h
        .windows(2)
        .filter(|w| only == 0 || w[1].revision == only)
        .map(|w| RevisionDiff {
            revision: w[1].revision,
            cause: &w[1].cause,
            changes: crate::diff::spec_changes(&w[0].spec, &w[1].spec),
        })
        .collect();
    match format {
        Format::Table => {
            if diffs.is_empty() {
                println!("no earlier revision to compare with");
            }
            for d in &diffs {
                println!(
                    "revision {} ({}): {} change(s)",
                    d.revision,
                    d.cause,
                    d.changes.len()
                );
                print_changes(&d.changes);
            }
        }
        other => output::value(other, &diffs)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the changed fields of a spec, coloured on a terminal: old in red, new in green.
pub fn print_changes(changes: &[crate::diff::SpecChange]) {
    use std::io::IsTerminal;
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let paint = |code: &str, text: String| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
    for c in changes {
        let (sign, line) = match (&c.old, &c.new) {
            (None, new) => ("+", paint("32", crate::diff::show(new))),
            (old, None) => (
                "-",
                format!("{} (removed)", paint("31", crate::diff::show(old))),
            ),
            (old, new) => (
                "~",
                format!(
                    "{} → {}",
                    paint("31", crate::diff::show(old)),
                    paint("32", crate::diff::show(new))
                ),
            ),
        };
        println!("  {sign} {}: {line}", c.path);
    }
}

/// Prints a plan as a readable diff: what the spec changes, the course of the whole change,
/// then the first steps.
pub fn print_plan(p: &Plan) {
    if !p.changes.is_empty() {
        println!("Changes ({}):", p.changes.len());
        print_changes(&p.changes);
    }
    if let Some(course) = &p.course {
        println!("Course: {course}");
    }
    let (provisions, destroys, replaces) = p.counts();
    println!(
        "Plan: {provisions} to provision, {destroys} to destroy, {replaces} to replace ({}, {} of {} current)",
        p.phase, p.current, p.size
    );
    for step in &p.steps {
        let (sign, kind, what, reason) = match step {
            Step::Provision {
                logical_id, reason, ..
            } => ("+", "provision", logical_id.as_deref(), reason),
            Step::Drain { id, reason } => (" ", "drain", Some(id.as_str()), reason),
            Step::Destroy { id, reason, .. } => ("-", "destroy", Some(id.as_str()), reason),
            Step::Replace { id, reason, .. } => ("~", "replace", Some(id.as_str()), reason),
            Step::Wait { reason } => (".", "wait", None, reason),
        };
        let what = what.map(|w| format!(" {w}")).unwrap_or_default();
        println!("  {sign} {kind}{what}: {reason}");
    }
    for m in &p.messages {
        println!("  ! {m}");
    }
}

/// The phase to show: a group being destroyed says so, whatever its last pass found.
fn shown_phase(g: &GroupView) -> String {
    match (&g.lifecycle, &g.status) {
        (Lifecycle::Destroying, _) => "destroying".into(),
        (_, Some(st)) => st.phase.to_string(),
        (_, None) => "-".into(),
    }
}

fn print_describe(g: &GroupView) {
    println!("Group:     {} (revision {})", g.id, g.revision);
    println!("Phase:     {}", shown_phase(g));
    let Some(st) = &g.status else {
        println!("Progress:  not yet reconciled");
        return;
    };
    println!(
        "Progress:  {} of {} on config {}",
        st.current, st.size, st.config_sha
    );
    if let Some(e) = &st.last_error {
        println!("Error:     {e}");
    }
    for m in &st.messages {
        println!("Note:      {m}");
    }
    let now = crate::event::now_ms();
    let mut t = output::table(&["instance", "logical id", "health", "config", "age", "notes"]);
    for i in &st.instances {
        let age = if i.created_ms == 0 {
            "-".to_string()
        } else {
            humantime::format_duration(Duration::from_secs(now.saturating_sub(i.created_ms) / 1000))
                .to_string()
        };
        t.add_row(vec![
            i.id.clone(),
            i.logical_id.clone().unwrap_or_else(|| "-".into()),
            i.health.to_string(),
            format!("{}{}", i.config_sha, if i.current { "" } else { " (old)" }),
            age,
            [
                (i.protected, "protected"),
                (i.removal_requested, "removal requested"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", "),
        ]);
    }
    output::print_table(&t);
}

/// Follows a group until it converges on `sha`; prints progress as it changes.
/// Follows a group until a pass over `revision` (or a later one) finds it converged or paused.
/// Until then the status may describe an earlier revision (a scale-up does not change the
/// configuration hash), so it is not taken for the answer.
async fn wait_converged(
    client: &super::Client,
    id: &str,
    revision: u64,
    wait: &WaitArgs,
    mut seen: u64,
) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + wait.timeout;
    let mut last = String::new();
    loop {
        seen = print_steps(client, id, seen).await;
        let g: GroupView = client.get(&format!("/v1/groups/{id}")).await?;
        let Some(st) = g.status else {
            if let Some(code) = next_poll(deadline, wait).await {
                return Ok(code);
            }
            continue;
        };
        let reached = st.revision >= revision;
        let why = if st.phase == Phase::Failing {
            st.last_error.clone()
        } else {
            st.messages.first().cloned()
        };
        let line = format!(
            "[{}/{}] {}{}",
            st.current,
            st.size,
            st.phase,
            why.map(|m| format!(": {m}")).unwrap_or_default()
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        if reached && st.phase == Phase::Converged {
            println!("group {id} converged");
            return Ok(ExitCode::SUCCESS);
        }
        if reached && st.phase == Phase::Paused {
            eprintln!("group {id} paused: {}", st.messages.join("; "));
            return Ok(ExitCode::from(EXIT_PAUSED));
        }
        if let Some(code) = next_poll(deadline, wait).await {
            return Ok(code);
        }
    }
}

/// The sequence number of the newest event.
async fn latest_seq(client: &super::Client) -> u64 {
    match client.get::<StatusResponse>("/v1/status").await {
        Ok(status) => status.last_event.unwrap_or(0),
        Err(_) => 0,
    }
}

/// Prints the group's events after `after` as progress lines; returns the last one seen.
async fn print_steps(client: &super::Client, id: &str, after: u64) -> u64 {
    let Ok(resp) = client
        .stream(&format!("/v1/events?after={after}&group={id}"))
        .await
    else {
        return after;
    };
    let text = resp.text().await.unwrap_or_default();
    let mut last = after;
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
    {
        last = last.max(e.seq);
        let what = e
            .instance
            .as_deref()
            .map(|i| format!(" {i}"))
            .unwrap_or_default();
        println!("  {}{what}: {}", e.kind, e.message);
    }
    last
}

/// Waits before the next poll of a `--wait`; the timeout's exit code once it has passed.
async fn next_poll(deadline: std::time::Instant, wait: &WaitArgs) -> Option<ExitCode> {
    if std::time::Instant::now() > deadline {
        eprintln!(
            "gave up waiting after {}",
            humantime::format_duration(wait.timeout)
        );
        return Some(ExitCode::from(EXIT_TIMEOUT));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    None
}

/// Follows a destroy until the group is gone.
async fn wait_gone(client: &super::Client, id: &str, wait: &WaitArgs) -> anyhow::Result<ExitCode> {
    let deadline = std::time::Instant::now() + wait.timeout;
    let mut last = String::new();
    loop {
        match client.get::<GroupView>(&format!("/v1/groups/{id}")).await {
            Ok(g) => {
                let n = g.status.map_or(0, |s| s.instances.len());
                let line = format!("[{n} left] destroying");
                if line != last {
                    println!("{line}");
                    last = line;
                }
            }
            Err(e) if Refused::is_not_found(&e) => {
                println!("group {id} destroyed");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e),
        }
        if let Some(code) = next_poll(deadline, wait).await {
            return Ok(code);
        }
    }
}

pub async fn run(cli: &Cli, cmd: &GroupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GroupCommand::Schema => {
            output::json(&GroupSpec::schema())?;
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Validate { spec } => {
            let path = spec.clone();
            let (spec, form) = tokio::task::spawn_blocking(move || GroupSpec::load_form(&path))
                .await
                .context("reading the spec")??;
            let registry = Arc::new(cli.registry().await?);
            let (controller, _) = foreground(registry, Options::default())?;
            controller.validate(&spec).await?;
            println!(
                "valid: group {} ({} instances, config {}), read as {form}",
                spec.id,
                spec.size(),
                spec.config_sha()
            );
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Plan { spec, output } => {
            let plan = match cli.daemon_if_running()? {
                Some(client) => {
                    let (_, text) = super::input::read_text(Some(spec))?;
                    client.post::<Plan>("/v1/plan", Some(text)).await?
                }
                None => {
                    let spec = load_spec(spec).await?;
                    let registry = Arc::new(cli.registry().await?);
                    let (controller, _) = foreground(registry, Options::default())?;
                    controller.validate(&spec).await?;
                    controller.plan(&spec, None).await?
                }
            };
            match output {
                Format::Table => print_plan(&plan),
                other => output::value(*other, &plan)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Commit {
            spec,
            dry_run,
            wait,
            output,
        } => {
            let (origin, text) = super::input::read_text(Some(spec))?;
            // Parse here too, so a bad file is reported with its own name.
            let parsed = GroupSpec::parse(
                &text,
                &origin,
                origin.ends_with(".yaml") || origin.ends_with(".yml"),
            )?;
            let client = cli.daemon()?;
            // Steps are shown as they happen, from the event log, starting before the commit.
            let from = latest_seq(&client).await;
            let path = format!("/v1/groups?dry_run={dry_run}");
            let answer: CommitResponse = client.post(&path, Some(text)).await?;
            match output {
                Format::Table => {
                    match (&answer.plan, &answer.plan_error) {
                        (_, Some(e)) => println!(
                            "no plan preview (committed all the same; the controller retries): {e}"
                        ),
                        (Some(p), None) => print_plan(p),
                        (None, None) => {}
                    }
                    if *dry_run {
                        println!("dry run: nothing committed");
                    } else {
                        println!(
                            "committed group {} revision {} (config {})",
                            parsed.id,
                            answer.revision.unwrap_or(0),
                            answer.config_sha
                        );
                    }
                }
                other => output::value(*other, &answer)?,
            }
            if wait.wait && !dry_run {
                let revision = answer.revision.unwrap_or(0);
                return wait_converged(&client, &parsed.id, revision, wait, from).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Ls { output } => {
            let groups: Vec<GroupView> = cli.daemon()?.get("/v1/groups").await?;
            match output {
                Format::Table => {
                    let mut t = output::table(&[
                        "id",
                        "revision",
                        "phase",
                        "current",
                        "size",
                        "instances",
                        "message",
                    ]);
                    for g in &groups {
                        let st = g.status.as_ref();
                        let num = |f: fn(&GroupStatus) -> usize| {
                            st.map(|s| f(s).to_string()).unwrap_or_else(|| "-".into())
                        };
                        t.add_row(vec![
                            g.id.clone(),
                            g.revision.to_string(),
                            shown_phase(g),
                            num(|s| s.current),
                            num(|s| s.size),
                            num(|s| s.instances.len()),
                            st.and_then(|s| {
                                s.last_error.clone().or_else(|| s.messages.first().cloned())
                            })
                            .unwrap_or_default(),
                        ]);
                    }
                    output::print_table(&t);
                }
                other => output::value(*other, &groups)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Describe { id, output } => {
            let g: GroupView = cli.daemon()?.get(&format!("/v1/groups/{id}")).await?;
            match output {
                Format::Table => print_describe(&g),
                other => output::value(*other, &g)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::History { id, diff, output } => {
            let h: Vec<Revision> = cli
                .daemon()?
                .get(&format!("/v1/groups/{id}/history"))
                .await?;
            if let Some(only) = diff {
                return print_history_diff(&h, *only, *output);
            }
            match output {
                Format::Table => {
                    let mut t =
                        output::table(&["revision", "committed", "cause", "config", "size"]);
                    for r in &h {
                        t.add_row(vec![
                            r.revision.to_string(),
                            crate::event::format_time(r.time_ms),
                            r.cause.clone(),
                            r.spec.config_sha(),
                            r.spec.size().to_string(),
                        ]);
                    }
                    output::print_table(&t);
                }
                other => output::value(*other, &h)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Rollback { id, to, wait } => {
            let client = cli.daemon()?;
            let from = latest_seq(&client).await;
            let path = match to {
                Some(n) => format!("/v1/groups/{id}/revisions/{n}/rollback"),
                None => format!("/v1/groups/{id}/rollback"),
            };
            let answer: CommitResponse = client.post(&path, None).await?;
            let revision = answer.revision.unwrap_or(0);
            println!(
                "group {id} rolled back: revision {revision} (config {})",
                answer.config_sha
            );
            if wait.wait {
                return wait_converged(&client, id, revision, wait, from).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Scale { id, size, wait } => {
            let client = cli.daemon()?;
            let group: GroupView = client.get(&format!("/v1/groups/{id}")).await?;
            let mut spec = group.spec;
            if spec.properties.allocation.logical_ids.is_some() {
                anyhow::bail!(
                    "group {id} is a set of pets (Allocation.LogicalIDs): add or remove logical ids \
                     in its spec instead of scaling it"
                );
            }
            let from_size = spec.size();
            spec.properties.allocation.size = Some(*size);
            let from = latest_seq(&client).await;
            let text = serde_json::to_string(&spec)?;
            let answer: CommitResponse = client.post("/v1/groups", Some(text)).await?;
            let revision = answer.revision.unwrap_or(0);
            println!(
                "group {id} scaled from {from_size} to {size}: revision {revision} (config {})",
                answer.config_sha
            );
            if wait.wait {
                return wait_converged(&client, id, revision, wait, from).await;
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::DestroyInstances {
            id,
            instances,
            decrement,
            wait,
        } => {
            let client = cli.daemon()?;
            let from = latest_seq(&client).await;
            let body = serde_json::json!({"instances": instances, "decrement": decrement});
            let answer: InstancesChanged = client
                .post(
                    &format!("/v1/groups/{id}/destroy-instances"),
                    Some(body.to_string()),
                )
                .await?;
            let list = answer.instances.join(", ");
            match answer.revision {
                Some(revision) => {
                    println!(
                        "group {id}: removing {list}; the group shrinks to {} (revision {revision})",
                        answer.size
                    );
                    if wait.wait {
                        return wait_converged(&client, id, revision, wait, from).await;
                    }
                }
                None => {
                    println!("group {id}: replacing {list}");
                    if wait.wait {
                        let group: GroupView = client.get(&format!("/v1/groups/{id}")).await?;
                        return wait_converged(&client, id, group.revision, wait, from).await;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Protect { id, instances } | GroupCommand::Unprotect { id, instances } => {
            let on = matches!(cmd, GroupCommand::Protect { .. });
            let verb = if on { "protect" } else { "unprotect" };
            let body = serde_json::json!({ "instances": instances });
            let answer: InstancesChanged = cli
                .daemon()?
                .post(&format!("/v1/groups/{id}/{verb}"), Some(body.to_string()))
                .await?;
            println!("group {id}: {verb}ed {}", answer.instances.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Free { id } => {
            cli.daemon()?
                .post::<Freed>(&format!("/v1/groups/{id}/free"), None)
                .await?;
            println!("group {id} is no longer managed; its instances were left as they are");
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Destroy { id, wait } => {
            if let Some(client) = cli.daemon_if_running()? {
                client
                    .post::<Destroying>(&format!("/v1/groups/{id}/destroy"), None)
                    .await?;
                println!("group {id}: draining and destroying every instance");
                if wait.wait {
                    return wait_gone(&client, id, wait).await;
                }
                return Ok(ExitCode::SUCCESS);
            }
            let path = Path::new(id);
            if !path.exists() {
                anyhow::bail!(
                    "no daemon is running and {id:?} is not a spec file; start `infrakit serve` \
                     or give the group's spec file to destroy it in the foreground"
                );
            }
            let spec = load_spec(path).await?;
            let registry = Arc::new(cli.registry().await?);
            let options = Options {
                poll_interval: Duration::from_millis(200),
                ..Options::default()
            };
            let (controller, store) = foreground(registry, options)?;
            let id = spec.id.clone();
            store
                .commit(
                    &spec,
                    Event::now(&id, EventKind::GroupCommitted, None, "destroy"),
                )
                .await?;
            store
                .mark_destroying(
                    &id,
                    Event::now(&id, EventKind::Planned, None, "destroy requested"),
                )
                .await?;
            controller.start();
            controller.applied(*store.watch().borrow()).await;
            let mut status = controller.watch(&id).context("group task")?;
            // The task ends once every instance is gone.
            while status.changed().await.is_ok() {}
            println!("group {id} destroyed");
            Ok(ExitCode::SUCCESS)
        }
        GroupCommand::Run {
            spec: path,
            poll_interval,
        } => {
            let spec = load_spec(path).await?;
            let registry = Arc::new(cli.registry().await?);
            let options = Options {
                poll_interval: *poll_interval,
                ..Options::default()
            };
            let (controller, store) = foreground(registry, options)?;
            controller.validate(&spec).await?;
            print_plan(&controller.plan(&spec, None).await?);
            let mut current_text = std::fs::read_to_string(path).unwrap_or_default();
            let id = spec.id.clone();
            // Each edit of the file is a new revision.
            controller.start();
            commit_foreground(&controller, &store, &spec).await?;
            let mut committed = spec;

            let mut last_phase = Phase::Converging;
            let mut ticker = tokio::time::interval(*poll_interval);
            let shutdown = crate::daemon::shutdown_signal();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = ticker.tick() => {}
                }
                // Follow edits of the spec file.
                if let Ok(text) = std::fs::read_to_string(path)
                    && text != current_text
                {
                    current_text = text;
                    match load_spec(path).await {
                        Ok(new) if new.id != id => eprintln!(
                            "error: {}: the group id changed from {id} to {}; ignoring the edit",
                            path.display(),
                            new.id
                        ),
                        Ok(new) => match controller.validate(&new).await {
                            Ok(()) => {
                                print_plan(&controller.plan(&new, Some(&committed)).await?);
                                commit_foreground(&controller, &store, &new).await?;
                                committed = new;
                            }
                            Err(e) => eprintln!("error: {e:#}; keeping the previous spec"),
                        },
                        Err(e) => eprintln!("error: {e:#}; keeping the previous spec"),
                    }
                }
                if let Some(status) = controller.status(&id)
                    && status.phase != last_phase
                {
                    last_phase = status.phase;
                    tracing::info!(group = %id, phase = %status.phase, "phase");
                }
            }
            controller.shutdown().await;
            println!("stopped; instances left as they are");
            Ok(ExitCode::SUCCESS)
        }
    }
}
