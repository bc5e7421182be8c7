//! Path guard: a group's project root is canonical and existing, and every process harness's
//! working directory resolves inside it after symlinks are followed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Canonicalizes a project root; it must be an existing directory.
pub fn canonical_root(root: &str) -> Result<String> {
    if root.is_empty() {
        return Err(Error::invalid("project_root", "must not be empty"));
    }
    if root.contains('\0') {
        return Err(Error::invalid(
            "project_root",
            "must not contain NUL characters",
        ));
    }
    let canonical = std::fs::canonicalize(root)
        .map_err(|err| Error::invalid("project_root", format!("{root:?}: {err}")))?;
    if !canonical.is_dir() {
        return Err(Error::invalid(
            "project_root",
            format!("{root:?} is not a directory"),
        ));
    }
    canonical
        .into_os_string()
        .into_string()
        .map_err(|_| Error::invalid("project_root", format!("{root:?} is not valid UTF-8")))
}

/// Resolves a working directory (relative paths against the root) and checks that it lies
/// inside the canonical root after symlinks are followed.
pub fn resolve_cwd(root: &str, cwd: Option<&str>) -> Result<PathBuf> {
    let root = Path::new(root);
    let wanted = match cwd {
        Some(cwd) => root.join(cwd),
        None => root.to_path_buf(),
    };
    let canonical = std::fs::canonicalize(&wanted)
        .map_err(|err| Error::invalid("cwd", format!("{}: {err}", wanted.display())))?;
    if !canonical.starts_with(root) {
        return Err(Error::invalid(
            "cwd",
            format!(
                "{} resolves to {}, outside the project root {}",
                wanted.display(),
                canonical.display(),
                root.display()
            ),
        ));
    }
    if !canonical.is_dir() {
        return Err(Error::invalid(
            "cwd",
            format!("{} is not a directory", canonical.display()),
        ));
    }
    Ok(canonical)
}
