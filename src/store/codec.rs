//! The one place values become bytes. Every stored value is one format-version byte followed by
//! its bincode (serde) encoding, so a later release can read old values or refuse clearly.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version byte written in front of every value this release stores (format 2: the storage
/// records of [`super::records`]). Format 1 (values that were the exported types themselves) is
/// read only by the migration, with [`decode_version`].
pub const FORMAT_VERSION: u8 = 2;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value behind the current format-version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|err| Error::storage(format!("cannot encode value: {err}")))?;
    Ok(out)
}

fn decode_limited<'de, T: Deserialize<'de>, const LIMIT: usize>(
    body: &'de [u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::borrow_decode_from_slice(body, config().with_limit::<LIMIT>())
}

/// Decodes with a limit on what the decoder may claim: 16 times the smallest power of 16 from
/// 1 KiB that holds the whole value. bincode claims each string's length before allocating it
/// and 1 to 16 bytes per decoded integer (whatever its varint size), so a valid value claims at
/// most 16 times its length and never hits the limit; a corrupt length prefix does, before it
/// allocates. Without the limit, a few corrupt bytes claiming a 4 GiB string made the decoder
/// allocate 4 GiB (found by fuzzing).
fn decode_body<'de, T: Deserialize<'de>>(
    body: &'de [u8],
) -> std::result::Result<(T, usize), bincode::error::DecodeError> {
    match body.len() {
        n if n <= 1 << 10 => decode_limited::<T, { 16 << 10 }>(body),
        n if n <= 1 << 14 => decode_limited::<T, { 16 << 14 }>(body),
        n if n <= 1 << 18 => decode_limited::<T, { 16 << 18 }>(body),
        n if n <= 1 << 22 => decode_limited::<T, { 16 << 22 }>(body),
        n if n <= 1 << 26 => decode_limited::<T, { 16 << 26 }>(body),
        _ => decode_limited::<T, { usize::MAX }>(body),
    }
}

/// Decodes a value written by [`encode`]; refuses unknown versions and trailing bytes. A type
/// with borrowed fields (`&'de str`) reads them straight from `bytes`, without a copy.
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    decode_version(bytes, FORMAT_VERSION)
}

/// [`decode`] of a value written behind version byte `expected` (the migration reads format 1
/// this way); any other version byte is refused.
pub fn decode_version<'de, T: Deserialize<'de>>(bytes: &'de [u8], expected: u8) -> Result<T> {
    match bytes.split_first() {
        Some((&version, body)) if version == expected => {
            let (value, used) =
                decode_body(body).map_err(|err| Error::storage(format!("corrupt value: {err}")))?;
            if used != body.len() {
                return Err(Error::storage(format!(
                    "corrupt value: {} trailing bytes",
                    body.len() - used
                )));
            }
            Ok(value)
        }
        Some((version, _)) => Err(Error::storage(format!(
            "value format version {version} is not supported here (expected {expected})"
        ))),
        None => Err(Error::storage("corrupt value: empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let value = (7u64, String::from("héllo"), Some(vec![1u8, 2, 3]));
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(),
            value
        );

        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        let err = decode::<(u64, String, Option<Vec<u8>>)>(&newer).unwrap_err();
        assert!(matches!(err, Error::Storage { ref reason } if reason.contains("version")));

        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&trailing).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }

    #[test]
    fn a_corrupt_length_prefix_is_refused_without_allocating_it() {
        // Version, then a string whose varint length claims u64::MAX - 1 bytes.
        let mut bytes = vec![FORMAT_VERSION, 0xfd];
        bytes.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
        bytes.extend_from_slice(b"tiny");
        let err = decode::<String>(&bytes).unwrap_err();
        assert!(matches!(err, Error::Storage { ref reason } if reason.contains("corrupt")));
        // Values at and around each step decode, integers (which claim more than their varint
        // bytes) included.
        for len in [0, 1 << 10, (1 << 10) + 1, 1 << 14, 1 << 18, (1 << 18) + 5] {
            let text = "x".repeat(len);
            assert_eq!(decode::<String>(&encode(&text).unwrap()).unwrap(), text);
        }
        let numbers: Vec<u128> = vec![0; 1 << 12];
        assert_eq!(
            decode::<Vec<u128>>(&encode(&numbers).unwrap()).unwrap(),
            numbers
        );
    }
}
