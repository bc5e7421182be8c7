//! Ids: UUIDv7 for groups, sessions and turns (time-ordered, so keys cluster by creation), stored
//! as `u128` keys and shown as hyphenated strings.

use uuid::Uuid;

use crate::error::{Error, Result};

/// A fresh time-ordered id.
pub(crate) fn new_id() -> u128 {
    Uuid::now_v7().as_u128()
}

/// The canonical string form of a stored id.
pub(crate) fn to_string(id: u128) -> String {
    Uuid::from_u128(id).hyphenated().to_string()
}

/// Parses a host-supplied id; `field` names the argument in the error.
pub(crate) fn parse(field: &str, text: &str) -> Result<u128> {
    if text.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Uuid::parse_str(text)
        .map(|id| id.as_u128())
        .map_err(|_| Error::invalid(field, format!("{text:?} is not a UUID")))
}

/// Parses an id the store itself wrote. A failure means the stored value is corrupt: `Storage`,
/// which aborts the writer's whole batch, never `InvalidInput`, which would refuse only the one
/// operation and let whatever it wrote before commit.
pub(crate) fn parse_stored(what: &str, text: &str) -> Result<u128> {
    Uuid::parse_str(text)
        .map(|id| id.as_u128())
        .map_err(|_| Error::storage(format!("corrupt store: {what} {text:?} is not a UUID")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_by_time() {
        let a = new_id();
        let b = new_id();
        assert!(a < b, "v7 ids are time-ordered");
        assert_eq!(parse("id", &to_string(a)).unwrap(), a);
        assert!(
            matches!(parse("group_id", "nope"), Err(Error::InvalidInput { field, .. }) if field == "group_id")
        );
        assert!(parse("group_id", "").is_err());
    }
}
