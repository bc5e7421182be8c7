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

    pub(crate) fn storage(reason: impl std::fmt::Display) -> Self {
        Error::Storage {
            reason: reason.to_string(),
        }
    }
}

macro_rules! storage_from {
    ($($source:ty),* $(,)?) => {
        $(impl From<$source> for Error {
            fn from(err: $source) -> Self {
                Error::storage(err)
            }
        })*
    };
}

storage_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    std::io::Error,
);

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
