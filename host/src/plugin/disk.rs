//! A plugin's disk quota: bytes and entries in the directories it may write (its scratch
//! directory and its read-write grants), checked on every write.
//!
//! WASI lets a guest write as much as the file system takes (150 MiB in 1.7 s, a 1 TiB sparse
//! file by `set-size`, were accepted before this). The host's implementations of the writing
//! calls (`write`, `set-size`, the write and append streams, `open-at` with `create`,
//! `create-directory-at`, `link-at`) are shadowed by ones that charge the quota first and then
//! call WASI's own. A sparse file counts at its apparent size, so a 1 TiB hole is refused like
//! 1 TiB of data.
//!
//! The usage is kept per plugin, across calls: measured by walking the directories once, then
//! raised by what each write may add. Deletions and overwrites are not seen, so the figure only
//! over-counts; when a write would cross the limit the directories are measured again (at most
//! every [`REMEASURE_EVERY`]), and only a real excess refuses it, with `insufficient-space`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    DescriptorFlags, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynOutputStream, FsError, OutputStream, Pollable, StreamError};

use super::sandbox::State;

/// How often, at most, the directories are walked again to correct the running figure.
pub const REMEASURE_EVERY: Duration = Duration::from_millis(200);

/// Bytes and directory entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes, files at their apparent size when that is larger than what they occupy.
    pub bytes: u64,
    /// Files, directories and links.
    pub entries: u64,
}

struct Running {
    usage: Usage,
    measured: Option<Instant>,
    /// Charged since the last walk: what a new walk may find was over-counted.
    charged_since: bool,
}

/// One plugin's quota over the directories it may write.
pub struct DiskQuota {
    roots: Vec<PathBuf>,
    limit: Usage,
    running: Mutex<Running>,
}

impl std::fmt::Debug for DiskQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskQuota")
            .field("roots", &self.roots)
            .field("limit", &self.limit)
            .finish()
    }
}

impl DiskQuota {
    /// A quota of `limit` over the host directories `roots`.
    pub fn new(roots: Vec<PathBuf>, limit: Usage) -> DiskQuota {
        DiskQuota {
            roots,
            limit,
            running: Mutex::new(Running {
                usage: Usage::default(),
                measured: None,
                charged_since: false,
            }),
        }
    }

    /// The limit.
    pub fn limit(&self) -> Usage {
        self.limit
    }

    /// What the directories hold now (a walk).
    pub fn measure(&self) -> Usage {
        let mut usage = Usage::default();
        let mut stack: Vec<PathBuf> = self.roots.clone();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                usage.entries += 1;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    use std::os::unix::fs::MetadataExt;
                    usage.bytes += meta.len().max(meta.blocks() * 512);
                }
            }
        }
        usage
    }

    /// Charges a write that may add `bytes` and `entries`, or refuses it when the directories
    /// would hold more than the limit.
    pub fn charge(&self, bytes: u64, entries: u64) -> Result<(), ErrorCode> {
        let mut r = self.running.lock().expect("quota lock");
        let fits = |u: &Usage| {
            u.bytes.saturating_add(bytes) <= self.limit.bytes
                && u.entries.saturating_add(entries) <= self.limit.entries
        };
        // Walk again when the figure may be over-counted (charges since the last walk) or the
        // last walk is old; a plugin knocking at a full quota does not walk on every refusal.
        let stale = r.measured.is_none_or(|t| t.elapsed() >= REMEASURE_EVERY);
        if r.measured.is_none() || (!fits(&r.usage) && (stale || r.charged_since)) {
            r.usage = self.measure();
            r.measured = Some(Instant::now());
            r.charged_since = false;
        }
        if !fits(&r.usage) {
            return Err(ErrorCode::InsufficientSpace);
        }
        r.usage.bytes = r.usage.bytes.saturating_add(bytes);
        r.usage.entries = r.usage.entries.saturating_add(entries);
        r.charged_since = true;
        Ok(())
    }
}

/// Refuses with `insufficient-space`, saying so in the log (once per refused call is enough to
/// explain it; the guest sees the error code).
fn refused(state: &State, what: &str) -> ErrorCode {
    let limit = state.disk().limit();
    tracing::warn!(
        plugin = %state.plugin(),
        write = what,
        limit_bytes = limit.bytes,
        limit_entries = limit.entries,
        "write refused: the plugin's disk quota (limits.disk, limits.disk_entries) is used up"
    );
    ErrorCode::InsufficientSpace
}

fn code(e: FsError) -> wasmtime::Result<ErrorCode> {
    e.downcast()
}

/// WASI's own answer, as the guest receives it (an error that is no error code traps).
fn answer<T>(r: Result<T, FsError>) -> wasmtime::Result<(Result<T, ErrorCode>,)> {
    Ok((match r {
        Ok(v) => Ok(v),
        Err(e) => Err(code(e)?),
    },))
}

/// The size of the file behind `fd` (0 when it cannot be told: the write is then charged its
/// length only, and WASI refuses it anyway if `fd` is no file).
async fn size_of(state: &mut State, fd: &Resource<Descriptor>) -> u64 {
    let borrowed = Resource::<Descriptor>::new_borrow(fd.rep());
    let mut view = state.filesystem();
    HostDescriptor::stat(&mut view, borrowed)
        .await
        .map_or(0, |s| s.size)
}

/// What writing `len` bytes at `offset` may add to a file of `size` bytes: the bytes, and the
/// hole before them.
fn growth(size: u64, offset: u64, len: u64) -> u64 {
    len.max(offset.saturating_add(len).saturating_sub(size))
}

/// An output stream of a file that charges the quota for each write.
struct Charged {
    inner: DynOutputStream,
    quota: std::sync::Arc<DiskQuota>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Charged {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Charged {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if self.quota.charge(bytes.len() as u64, 0).is_err() {
            // ENOSPC, which `filesystem-error-code` reports as `insufficient-space` (a guest's
            // libc may still say only "I/O error"; the host's warning names the quota).
            tracing::warn!(
                limit_bytes = self.quota.limit().bytes,
                "stream write refused: the plugin's disk quota (limits.disk) is used up"
            );
            let no_space =
                std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
            return Err(StreamError::LastOperationFailed(no_space.into()));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        self.inner.check_write()
    }
}

/// Wraps the stream WASI made for `fd` so that its writes are charged.
fn charged_stream(
    state: &mut State,
    stream: Resource<DynOutputStream>,
) -> wasmtime::Result<Resource<DynOutputStream>> {
    let quota = state.disk().clone();
    let table = state.table();
    let inner = table.delete(stream)?;
    let wrapped: DynOutputStream = Box::new(Charged { inner, quota });
    Ok(table.push(wrapped)?)
}

/// Shadows WASI's writing calls with ones that charge the plugin's quota first.
pub fn charge_writes(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:filesystem/types@0.2.12")?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut cx, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = cx.data_mut();
                let size = size_of(state, &fd).await;
                if state
                    .disk()
                    .charge(growth(size, offset, buf.len() as u64), 0)
                    .is_err()
                {
                    return Ok((Err(refused(state, "write")),));
                }
                let mut view = state.filesystem();
                answer(HostDescriptor::write(&mut view, fd, buf, offset).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut cx, (fd, new_size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = cx.data_mut();
                let size = size_of(state, &fd).await;
                if state
                    .disk()
                    .charge(new_size.saturating_sub(size), 0)
                    .is_err()
                {
                    return Ok((Err(refused(state, "set-size")),));
                }
                let mut view = state.filesystem();
                answer(HostDescriptor::set_size(&mut view, fd, new_size).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write-via-stream",
        |mut cx, (fd, offset): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = cx.data_mut();
                // A stream that starts past the end leaves a hole: charged up front.
                let size = size_of(state, &fd).await;
                if state.disk().charge(offset.saturating_sub(size), 0).is_err() {
                    return Ok((Err(refused(state, "write-via-stream")),));
                }
                let mut view = state.filesystem();
                let stream = match HostDescriptor::write_via_stream(&mut view, fd, offset) {
                    Ok(s) => s,
                    Err(e) => return Ok((Err(code(e)?),)),
                };
                Ok((Ok(charged_stream(state, stream)?),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.append-via-stream",
        |mut cx, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = cx.data_mut();
                let mut view = state.filesystem();
                let stream = match HostDescriptor::append_via_stream(&mut view, fd) {
                    Ok(s) => s,
                    Err(e) => return Ok((Err(code(e)?),)),
                };
                Ok((Ok(charged_stream(state, stream)?),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut cx,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = cx.data_mut();
                // A create may add an entry (or find the file there: over-counted, corrected
                // by the next walk).
                if open_flags.contains(OpenFlags::CREATE) && state.disk().charge(0, 1).is_err() {
                    return Ok((Err(refused(state, "open-at create")),));
                }
                let mut view = state.filesystem();
                answer(
                    HostDescriptor::open_at(&mut view, fd, path_flags, path, open_flags, flags)
                        .await,
                )
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut cx, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = cx.data_mut();
                if state.disk().charge(0, 1).is_err() {
                    return Ok((Err(refused(state, "create-directory-at")),));
                }
                let mut view = state.filesystem();
                answer(HostDescriptor::create_directory_at(&mut view, fd, path).await)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut cx,
         (fd, old_flags, old_path, new_dir, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                let state = cx.data_mut();
                if state.disk().charge(0, 1).is_err() {
                    return Ok((Err(refused(state, "link-at")),));
                }
                let mut view = state.filesystem();
                answer(
                    HostDescriptor::link_at(&mut view, fd, old_flags, old_path, new_dir, new_path)
                        .await,
                )
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hole_counts_at_its_size() {
        assert_eq!(growth(0, 0, 10), 10);
        assert_eq!(growth(100, 10, 10), 10);
        assert_eq!(growth(0, 1 << 40, 1), (1 << 40) + 1);
    }

    #[test]
    fn the_running_figure_only_refuses_what_a_new_measure_confirms() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 1000]).unwrap();
        let quota = DiskQuota::new(
            vec![dir.path().to_path_buf()],
            Usage {
                bytes: 20_000,
                entries: 10,
            },
        );
        let first = quota.measure();
        assert_eq!(first.entries, 1);
        assert!((1000..=8192).contains(&first.bytes), "{first:?}");
        // Charges that were never written (over-counted) are corrected by a walk.
        for _ in 0..5 {
            assert!(quota.charge(8000, 0).is_ok());
        }
        // What is really there refuses: a file the walk finds.
        std::fs::write(dir.path().join("b"), vec![1u8; 16_000]).unwrap();
        assert_eq!(quota.charge(8000, 0), Err(ErrorCode::InsufficientSpace));
        // Space freed is found by a later walk.
        std::fs::remove_file(dir.path().join("b")).unwrap();
        std::thread::sleep(REMEASURE_EVERY);
        assert!(quota.charge(8000, 0).is_ok());
        assert_eq!(quota.charge(0, 11), Err(ErrorCode::InsufficientSpace));
    }
}
