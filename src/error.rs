//! The one public error type. Every refusal names what was wrong precisely enough for a host to
//! show it to a person; internal failures (redb, codec, threads) map onto `Storage` or `Closed`.

/// Every way a call can fail. The bindings call it `CovenError` (`CovenException` in Kotlin) so
/// it does not shadow the languages' own `Error` and `Exception`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(name = "CovenError")]
pub enum Error {
    /// The named thing does not exist (or no longer does).
    #[error("{what} not found: {id}")]
    NotFound { what: String, id: String },
    /// An argument was refused before anything changed.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },
    /// The call is valid but the current state forbids it (a running turn, a duplicate, ...).
    #[error("conflict: {reason}")]
    Conflict { reason: String },
    /// A harness failed in a way that concerns the caller rather than one member's reply.
    #[error("harness error: {reason}")]
    Harness { reason: String },
    /// The store could not read or write; nothing of the failed call was acknowledged.
    #[error("storage error: {reason}")]
    Storage { reason: String },
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The other end of a sync could not be reached or did not answer as it should; nothing of
    /// the call was lost: sync again later.
    #[error("unavailable: {reason}")]
    Unavailable { reason: String },
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn not_found(what: &str, id: impl Into<String>) -> Self {
        Error::NotFound {
            what: what.to_owned(),
            id: id.into(),
        }
    }

    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn conflict(reason: impl Into<String>) -> Self {
        Error::Conflict {
            reason: reason.into(),
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
        }
    }

    pub(crate) fn storage(reason: impl std::fmt::Display) -> Self {
        Error::Storage {
            reason: reason.to_string(),
        }
    }
}

/// What a call gets once redb has seen an I/O error on this open store. redb then refuses every
/// later write, and every read that reaches the file, for as long as the database stays open,
/// even once the cause (a full disk, a failing device) is gone; closing and reopening repairs it.
pub(crate) const REOPEN_AFTER_IO_ERROR: &str =
    "an earlier I/O error (such as a full disk or a failed fsync) left this open store unable to \
     write: redb refuses every later write, and every read that reaches the file, even once the \
     cause is gone; close the store (Coven::close) and open it again (a durable store keeps every \
     acknowledged write)";

impl From<redb::StorageError> for Error {
    fn from(err: redb::StorageError) -> Self {
        match err {
            redb::StorageError::PreviousIo => Error::storage(REOPEN_AFTER_IO_ERROR),
            // Only a read that outlived its database meets this; the gate in front of reads
            // keeps that from happening, and it would mean the store was closed.
            redb::StorageError::DatabaseClosed => Error::Closed,
            other => Error::storage(other),
        }
    }
}

/// Conversions for redb errors that may wrap a `StorageError`, which keeps its meaning above.
macro_rules! storage_from {
    ($($source:ident),* $(,)?) => {
        $(impl From<redb::$source> for Error {
            fn from(err: redb::$source) -> Self {
                match err {
                    redb::$source::Storage(storage) => storage.into(),
                    other => Error::storage(other),
                }
            }
        })*
    };
}

storage_from!(TableError, TransactionError, CommitError);

impl From<redb::Error> for Error {
    fn from(err: redb::Error) -> Self {
        match err {
            redb::Error::PreviousIo => redb::StorageError::PreviousIo.into(),
            redb::Error::DatabaseClosed => Error::Closed,
            other => Error::storage(other),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::storage(err)
    }
}

impl From<redb::DatabaseError> for Error {
    fn from(err: redb::DatabaseError) -> Self {
        match err {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::conflict(
                "the store file is already open (one open per file per process; share the Coven handle)",
            ),
            other => Error::storage(other),
        }
    }
}
