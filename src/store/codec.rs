//! The one place values become bytes. Every stored value is one format-version byte followed by
//! its bincode (serde) encoding, so a later release can read old values or refuse clearly.

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Version byte written in front of every value this release stores.
pub const FORMAT_VERSION: u8 = 1;

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

/// Decodes a value written by [`encode`]; refuses unknown versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            let (value, used) = bincode::serde::decode_from_slice(body, config())
                .map_err(|err| Error::storage(format!("corrupt value: {err}")))?;
            if used != body.len() {
                return Err(Error::storage(format!(
                    "corrupt value: {} trailing bytes",
                    body.len() - used
                )));
            }
            Ok(value)
        }
        Some((version, _)) => Err(Error::storage(format!(
            "value format version {version} is not supported (this release reads {FORMAT_VERSION})"
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
}
