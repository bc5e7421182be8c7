//! redb panics on some damaged files instead of returning an error: a page whose type byte is
//! garbage reaches an `unreachable!()` in its B-tree code, on open (debug builds) or on the first
//! `open_table` or range over it. No panic may cross the public API, so every call that reads the
//! store file runs inside [`contain_panic`], which turns a panic into `Storage`.
//!
//! After a contained panic redb's in-memory state may be inconsistent and some of its locks
//! poisoned, so later calls on the same handle can panic too; each of them is contained the same
//! way and answers `Storage`. The panic still reaches the process's panic hook (which prints it
//! to stderr by default), and a host built with `panic = "abort"` cannot be protected this way.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, Result};

/// Runs `body`; a panic inside it becomes `Storage` naming `operation` and the panic's message.
pub fn contain_panic<T>(operation: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    // Unwind safety: what `body` borrows is redb state; a panic leaves it possibly inconsistent,
    // which every later call tolerates by being contained too (see the module comment).
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        Err(Error::storage(format!(
            "{operation} failed: the storage engine panicked ({}), as it does on a damaged \
             store file",
            panic_message(payload.as_ref())
        )))
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "no message"
    }
}
