//! Creating a store file atomically: the path holds either nothing or a complete store, never a
//! half-initialised file that every later open refuses.
//!
//! A new store is built in a temporary file beside the path (owner-only, unique name), its schema
//! committed and synced, and only then renamed into place with a rename that refuses to replace
//! an existing file; the directory is synced after. Two processes creating the same path at once
//! both build a store, one rename wins, and the other discards its own and opens the winner's.
//! A crash leaves at most a temporary file, which no open mistakes for the store and the next
//! creation of the same path removes.
//!
//! A zero-length file at the path is what earlier releases left when a first open was
//! interrupted (they created the file, then initialised it in place). It holds no data, so it is
//! treated as absent: a new store is built the same way and renamed over it, under an exclusive
//! lock on the empty file so that two processes doing this at once cannot replace each other's.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// The path with symbolic links in its last component followed, so that a store reached
/// through a link is opened, created and replaced where the link points (a rename would
/// otherwise replace the link itself).
pub fn follow_links(path: &Path) -> Result<PathBuf> {
    // As many as the system itself follows before it gives up with ELOOP.
    const MAX_LINKS: usize = 40;
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::read_link(&path) {
            // An absolute target replaces the parent when joined.
            Ok(target) => {
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::InvalidInput | io::ErrorKind::NotFound
                ) =>
            {
                return Ok(path);
            }
            Err(err) => return Err(cannot("resolve", &path, err)),
        }
    }
    Err(Error::storage(format!(
        "cannot resolve store file {}: more than {MAX_LINKS} symbolic links",
        path.display()
    )))
}

/// What the path holds.
pub enum AtPath {
    Missing,
    /// A zero-length file, opened read-write.
    Empty(File),
    /// A file with content, opened read-write (a store, or a file that must be refused as not one).
    Existing(File),
}

/// Looks at the path without changing anything there.
pub fn at_path(path: &Path) -> Result<AtPath> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => {
            let len = file
                .metadata()
                .map_err(|err| cannot("read the metadata of", path, err))?
                .len();
            Ok(if len == 0 {
                AtPath::Empty(file)
            } else {
                AtPath::Existing(file)
            })
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(AtPath::Missing),
        Err(err) => Err(cannot("open", path, err)),
    }
}

/// What to do with whatever is at the path once the new store is ready.
pub enum Placement<'a> {
    /// The path was absent: take it only if it still is.
    IfAbsent,
    /// The path held this empty file: replace it only if it still does.
    OverEmpty(&'a File),
}

/// A new store file under its temporary name, removed on drop unless [`Temporary::place`]
/// moved it to the store's path.
pub struct Temporary {
    path: PathBuf,
    dir: PathBuf,
    /// The name of the store file, whose leftovers this temporary's name pattern identifies.
    name: String,
    placed: bool,
}

/// The rename into place lost: another process created or replaced the path first.
pub struct Lost;

impl Temporary {
    /// Creates an empty, owner-only file with a unique name in the store's directory, and
    /// returns it opened read-write.
    pub fn create(store: &Path) -> Result<(Self, File)> {
        // Lossy is enough: the name only has to tell this store's temporaries from others'.
        let name = store
            .file_name()
            .ok_or_else(|| Error::invalid("path", format!("{} names no file", store.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = match store.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let path = dir.join(format!("{}{}", leftover_prefix(&name), unique_suffix()));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&path)
            .map_err(|err| cannot("create a new store beside", store, err))?;
        let temporary = Self {
            path,
            dir,
            name,
            placed: false,
        };
        Ok((temporary, file))
    }

    /// Moves the file, whose content the caller has synced, to `store` as `placement` allows,
    /// then syncs the directory so the new name survives a power loss. `Lost` when another
    /// process got there first (the temporary file is then removed when `self` drops).
    pub fn place(&mut self, store: &Path, placement: Placement<'_>) -> Result<Result<(), Lost>> {
        let moved = match placement {
            Placement::IfAbsent => rename_no_replace(&self.path, store),
            Placement::OverEmpty(empty) => {
                // The lock keeps other processes of this release from replacing it meanwhile;
                // checked under it, the path still names that empty file.
                if !still_empty_at(empty, store)? {
                    return Ok(Err(Lost));
                }
                std::fs::rename(&self.path, store)
            }
        };
        match moved {
            Ok(()) => self.placed = true,
            // Someone else's store is there now, or removed this temporary as a crash's leftover
            // because it had already won.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                ) =>
            {
                return Ok(Err(Lost));
            }
            Err(err) => return Err(cannot("move the new store to", store, err)),
        }
        sync_dir(&self.dir).map_err(|err| cannot("sync the directory of", store, err))?;
        self.remove_leftovers();
        Ok(Ok(()))
    }

    /// Removes what interrupted creations of the same store left beside it. Run once this
    /// creation has won the path: any other creation of it still running will lose its rename
    /// (its temporary is gone or the path taken) and open this store instead.
    fn remove_leftovers(&self) {
        let prefix = leftover_prefix(&self.name);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(suffix) = name.to_str().and_then(|name| name.strip_prefix(&prefix)) else {
                continue;
            };
            if !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                // Best effort: a leftover that cannot be removed blocks nothing.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Takes the exclusive lock on an empty store file that marks the process replacing it. `false`
/// when another process holds it.
pub fn lock_empty(empty: &File, store: &Path) -> Result<bool> {
    match empty.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(err)) => Err(cannot("lock", store, err)),
    }
}

/// Whether `store` still names `empty`, and it is still empty.
fn still_empty_at(empty: &File, store: &Path) -> Result<bool> {
    let held = empty
        .metadata()
        .map_err(|err| cannot("read the metadata of", store, err))?;
    let current = match std::fs::metadata(store) {
        Ok(current) => current,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(cannot("read the metadata of", store, err)),
    };
    Ok(held.len() == 0 && same_file(&held, &current))
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.modified().ok() == b.modified().ok()
}

/// `.<store name>.creating-`, followed by hex digits in a temporary's name.
fn leftover_prefix(store_name: &str) -> String {
    format!(".{store_name}.creating-")
}

/// Unique among the processes and threads creating stores in one directory.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!(
        "{:08x}{:08x}{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists, atomically where the
/// system can (renameat2 `RENAME_NOREPLACE` on Linux and Android, renamex_np `RENAME_EXCL` on
/// Apple systems), otherwise by a hard link and an unlink (a crash between them leaves a second
/// name of the store, which the next creation's leftover sweep removes).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    match atomic_rename_no_replace(from, to) {
        Err(err) if is_unsupported(&err) => link_then_unlink(from, to),
        result => result,
    }
}

fn link_then_unlink(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    // The store is in place; a temporary name left behind is only a second name for it.
    let _ = std::fs::remove_file(from);
    Ok(())
}

fn is_unsupported(err: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)
        ) || err.raw_os_error() == Some(libc::EOPNOTSUPP)
    }
    #[cfg(not(unix))]
    {
        err.kind() == io::ErrorKind::Unsupported
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn atomic_rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated and outlive the call; renameat2 reads nothing else.
    // Called through syscall() because older C libraries (Android before API 30) lack a wrapper.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_vendor = "apple")]
fn atomic_rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let (from, to) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated and outlive the call.
    let result = unsafe { libc::renamex_np(from.as_ptr(), to.as_ptr(), libc::RENAME_EXCL) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn atomic_rename_no_replace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Elsewhere a directory cannot be opened for syncing; the rename is as durable as the
    // system makes it.
    Ok(())
}

fn cannot(action: &str, path: &Path, err: io::Error) -> Error {
    Error::storage(format!(
        "cannot {action} store file {}: {err}",
        path.display()
    ))
}
