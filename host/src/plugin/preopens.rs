//! The directories a plugin sees (its scratch directory and its granted ones), opened once and
//! handed to each call only when its guest asks for them.
//!
//! wasmtime-wasi opens every preopen when a context is built, an `open` and a `close` per
//! directory on every call, whether or not the guest touches a file (5 µs per call for three
//! granted directories). Here each call gets clones of handles opened once per plugin, and
//! only from `wasi:filesystem/preopens.get-directories`, which a guest calls on its first path
//! operation: a call that does no file I/O pays nothing for its grants.
//!
//! A cached handle is checked against its path (one `stat`) each time it is handed out: a
//! granted directory replaced on the host since is reopened, a removed scratch directory is
//! recreated, a removed granted directory fails the call naming it. Isolation is unchanged: a
//! handle is a capability to the directory, not state; descriptors opened through it belong to
//! the call's own resource table and go with its store.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::{FsPerms, OpenMode};

use super::sandbox::{SCRATCH_GUEST_PATH, State};
use crate::grants::{self, Grants};

/// A plugin's directories, shared by its calls.
#[derive(Debug)]
pub struct Preopens {
    slots: Mutex<Vec<Slot>>,
}

#[derive(Debug)]
struct Slot {
    host: PathBuf,
    guest: String,
    perms: FsPerms,
    /// The scratch directory is the host's own: recreated if something removed it.
    scratch: bool,
    /// The open handle and the (device, inode) it was opened on.
    open: Option<(DirHandle, (u64, u64))>,
}

/// `Dir` does not implement `Debug`.
struct DirHandle(Dir);

impl std::fmt::Debug for DirHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dir")
    }
}

/// Why a call's directories could not be handed out.
#[derive(Debug, thiserror::Error)]
#[error("{what} {host} (guest {guest}): {source}")]
pub struct PreopenError {
    what: &'static str,
    host: String,
    guest: String,
    source: std::io::Error,
}

impl Preopens {
    /// The scratch directory (as `/data`) and every granted directory; nothing is opened yet.
    pub fn new(scratch: &std::path::Path, grants: &Grants) -> Self {
        let mut slots = vec![Slot {
            host: scratch.to_path_buf(),
            guest: SCRATCH_GUEST_PATH.to_string(),
            perms: FsPerms::ReadWrite,
            scratch: true,
            open: None,
        }];
        slots.extend(grants.files.iter().map(|f| Slot {
            host: f.host.clone(),
            guest: f.guest.clone(),
            perms: match f.mode {
                grants::Mode::ReadOnly => FsPerms::ReadOnly,
                grants::Mode::ReadWrite => FsPerms::ReadWrite,
            },
            scratch: false,
            open: None,
        }));
        Preopens {
            slots: Mutex::new(slots),
        }
    }

    /// Handles to every directory, current with their paths, in grant order (scratch first).
    pub fn handles(&self) -> Result<Vec<(Dir, String)>, PreopenError> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter_mut().map(Slot::current).collect()
    }
}

impl Slot {
    fn current(&mut self) -> Result<(Dir, String), PreopenError> {
        let fail = |source| PreopenError {
            what: if self.scratch {
                "scratch directory"
            } else {
                "granted directory"
            },
            host: self.host.display().to_string(),
            guest: self.guest.clone(),
            source,
        };
        let now = match std::fs::metadata(&self.host) {
            Err(e) if self.scratch && e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.host).map_err(fail)?;
                None
            }
            Err(e) => return Err(fail(e)),
            Ok(m) => Some((m.dev(), m.ino())),
        };
        if let Some((dir, id)) = &self.open
            && Some(*id) == now
        {
            return Ok((dir.0.clone(), self.guest.clone()));
        }
        // O_PATH: the handle names the directory; wasmtime-wasi opens what is under it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::PATH).bits() as i32)
            .open(&self.host)
            .map_err(fail)?;
        // The id of what was opened, not of what the path named a moment before.
        let m = file.metadata().map_err(fail)?;
        let mode = match self.perms {
            FsPerms::ReadOnly => OpenMode::READ,
            FsPerms::ReadWrite => OpenMode::READ | OpenMode::WRITE,
        };
        // Blocking on the calling thread: see `allow_blocking_current_thread` in `State::new`.
        let dir = Dir::new(file, self.perms, mode, true);
        self.open = Some((DirHandle(dir.clone()), (m.dev(), m.ino())));
        Ok((dir, self.guest.clone()))
    }
}

/// Serves `get-directories` from the plugin's [`Preopens`] instead of the WASI context (which
/// has none). A failure is kept in the call's state so the call reports it as a sandbox that
/// could not be set up, naming the directory, rather than as a guest trap.
pub fn serve_preopens(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker
        .instance("wasi:filesystem/preopens@0.2.12")?
        .func_wrap(
            "get-directories",
            |mut cx: wasmtime::StoreContextMut<'_, State>, (): ()| {
                let state = cx.data_mut();
                let handles = match state.preopens().handles() {
                    Ok(h) => h,
                    Err(e) => {
                        let reason = e.to_string();
                        state.setup_failed = Some(reason.clone());
                        return Err(wasmtime::Error::msg(reason));
                    }
                };
                Ok((push(state.table(), handles)?,))
            },
        )?;
    linker.allow_shadowing(false);
    Ok(())
}

fn push(
    table: &mut ResourceTable,
    handles: Vec<(Dir, String)>,
) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
    handles
        .into_iter()
        .map(|(dir, guest)| Ok((table.push(Descriptor::Dir(dir))?, guest)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants_with(dir: &std::path::Path) -> Grants {
        let toml = format!(
            "[[files]]\nhost = {:?}\nguest = \"/g\"\nmode = \"read-only\"\n",
            dir.display().to_string()
        );
        Grants::parse(&toml, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn handles_are_opened_once_and_follow_a_replaced_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        let granted = tmp.path().join("granted");
        std::fs::create_dir_all(&granted).unwrap();
        let p = Preopens::new(&scratch, &grants_with(&granted));

        // The scratch directory is made on first use; the guest names come in grant order.
        let first = p.handles().unwrap();
        assert!(scratch.is_dir());
        let names: Vec<&str> = first.iter().map(|(_, g)| g.as_str()).collect();
        assert_eq!(names, ["/data", "/g"]);

        // Unchanged paths: the same open handles, not new ones.
        let again = p.handles().unwrap();
        assert!(std::sync::Arc::ptr_eq(&first[1].0.dir, &again[1].0.dir));

        // Replaced on the host: reopened, on the new directory.
        std::fs::rename(&granted, tmp.path().join("old")).unwrap();
        std::fs::create_dir_all(&granted).unwrap();
        let replaced = p.handles().unwrap();
        assert!(!std::sync::Arc::ptr_eq(&first[1].0.dir, &replaced[1].0.dir));
        let ino = std::fs::metadata(&granted).unwrap().ino();
        assert_eq!(replaced[1].0.dir.metadata().unwrap().ino(), ino);

        // Removed: the error names the directory; the scratch directory comes back.
        std::fs::remove_dir(&granted).unwrap();
        std::fs::remove_dir(&scratch).unwrap();
        let Err(err) = p.handles() else {
            panic!("a removed granted directory was handed out")
        };
        let err = err.to_string();
        assert!(
            err.contains("granted directory") && err.contains("(guest /g)"),
            "{err}"
        );
        std::fs::create_dir_all(&granted).unwrap();
        p.handles().unwrap();
        assert!(scratch.is_dir());
    }
}
