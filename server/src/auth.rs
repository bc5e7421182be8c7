//! Who a request speaks for. Over the Unix socket (mode 0600: only the owning user can connect)
//! every request is the owner's. Over TCP every request but the handshake and the OpenAPI
//! document needs `Authorization: Bearer <token>`: the owner token (created at first start in a
//! file of mode 0600) or a share token scoped to chosen groups, read-only or read-write.
//!
//! Tokens are 256 random bits. Only their SHA-256 digests are kept (in memory, and for shares in
//! a file of mode 0600 beside the store); a presented token's digest is compared with every
//! known digest in constant time. Creating or revoking a share takes effect for the next request.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{millis, Share, ShareAccess};

/// Most groups one share may name.
pub const MAX_SHARE_GROUPS: usize = 256;
/// Most shares a server keeps.
pub const MAX_SHARES: usize = 1024;
/// Longest share label, in characters.
pub const MAX_LABEL_CHARS: usize = 200;

/// Who a request speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything: the Unix socket, or the owner token.
    Owner,
    /// Only the share's groups; writes only with `ReadWrite`.
    Share {
        id: String,
        group_ids: Vec<String>,
        access: ShareAccess,
    },
}

impl Principal {
    /// Whether the principal may read the group.
    pub fn reaches(&self, group_id: &str) -> bool {
        match self {
            Principal::Owner => true,
            Principal::Share { group_ids, .. } => group_ids.iter().any(|g| g == group_id),
        }
    }

    /// Whether the principal may change the groups it reaches.
    pub fn writes(&self) -> bool {
        match self {
            Principal::Owner => true,
            Principal::Share { access, .. } => *access == ShareAccess::ReadWrite,
        }
    }

    pub fn is_owner(&self) -> bool {
        matches!(self, Principal::Owner)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredShare {
    share: Share,
    /// Hex SHA-256 of the token.
    digest: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SharesFile {
    shares: Vec<StoredShare>,
}

struct State {
    owner: [u8; 32],
    shares: Vec<(Share, [u8; 32])>,
}

/// The owner token's digest and the shares, persisted beside the store.
pub struct Tokens {
    state: Mutex<State>,
    /// Where shares are persisted; `None` keeps them in memory only.
    shares_path: Option<PathBuf>,
}

/// A fresh random token with a readable prefix (`cgo_` owner, `cgs_` share).
pub fn new_token(prefix: &str) -> std::io::Result<String> {
    Ok(format!("{prefix}{}", hex(&random_bytes::<32>()?)))
}

fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| std::io::Error::other(err.to_string()))?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

/// Equal in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keeps the compiler from ending the loop early on a difference it could see.
    std::hint::black_box(diff) == 0
}

/// Reads the owner token at `path`, or creates it (mode 0600, never replacing a file another
/// process created meanwhile). Returns the token.
pub fn owner_token(path: &Path) -> std::io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            if let Ok(meta) = fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the owner token file is readable by other users; make it mode 0600"
                    );
                }
            }
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(std::io::Error::other(format!(
                    "the owner token file {} is empty",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let token = new_token("cgo_")?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(err) => Err(err),
    }
}

impl Tokens {
    /// The owner token's digest, and the shares persisted at `shares_path` (none when the file
    /// does not exist yet).
    pub fn load(owner_token: &str, shares_path: Option<PathBuf>) -> std::io::Result<Self> {
        let mut shares = Vec::new();
        if let Some(path) = &shares_path {
            match fs::read(path) {
                Ok(bytes) => {
                    let file: SharesFile = serde_json::from_slice(&bytes).map_err(|err| {
                        std::io::Error::other(format!("{} is not readable: {err}", path.display()))
                    })?;
                    for stored in file.shares {
                        let digest = unhex(&stored.digest).ok_or_else(|| {
                            std::io::Error::other(format!(
                                "{} holds a malformed digest",
                                path.display()
                            ))
                        })?;
                        shares.push((stored.share, digest));
                    }
                }
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(Self {
            state: Mutex::new(State {
                owner: digest(owner_token),
                shares,
            }),
            shares_path,
        })
    }

    /// The principal a bearer token speaks for, if any.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let presented = digest(token);
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        if constant_time_eq(&presented, &state.owner) {
            found = Some(Principal::Owner);
        }
        // Every digest is compared, so the time taken does not tell which one matched.
        for (share, digest) in &state.shares {
            if constant_time_eq(&presented, digest) && found.is_none() {
                found = Some(Principal::Share {
                    id: share.id.clone(),
                    group_ids: share.group_ids.clone(),
                    access: share.access,
                });
            }
        }
        found
    }

    /// Every share, oldest first.
    pub fn list(&self) -> Vec<Share> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .shares
            .iter()
            .map(|(share, _)| share.clone())
            .collect()
    }

    /// Adds a share and persists it before it is usable; returns it with its token.
    pub fn create(
        &self,
        group_ids: Vec<String>,
        access: ShareAccess,
        label: Option<String>,
    ) -> std::io::Result<(Share, String)> {
        let token = new_token("cgs_")?;
        let share = Share {
            id: hex(&random_bytes::<8>()?),
            group_ids,
            access,
            label,
            created_at: millis(SystemTime::now()),
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.shares.len() >= MAX_SHARES {
            return Err(std::io::Error::other(format!(
                "at most {MAX_SHARES} shares can exist; revoke one first"
            )));
        }
        let mut next = state.shares.clone();
        next.push((share.clone(), digest(&token)));
        self.persist(&next)?;
        state.shares = next;
        Ok((share, token))
    }

    /// Removes a share; its token is refused from the next request on. False when unknown.
    pub fn revoke(&self, share_id: &str) -> std::io::Result<bool> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.shares.iter().any(|(share, _)| share.id == share_id) {
            return Ok(false);
        }
        let next: Vec<(Share, [u8; 32])> = state
            .shares
            .iter()
            .filter(|(share, _)| share.id != share_id)
            .cloned()
            .collect();
        self.persist(&next)?;
        state.shares = next;
        Ok(true)
    }

    /// Writes the shares file atomically (a temporary file of mode 0600, synced, renamed).
    fn persist(&self, shares: &[(Share, [u8; 32])]) -> std::io::Result<()> {
        let Some(path) = &self.shares_path else {
            return Ok(());
        };
        let file = SharesFile {
            shares: shares
                .iter()
                .map(|(share, digest)| StoredShare {
                    share: share.clone(),
                    digest: hex(digest),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let temporary = path.with_extension("json.tmp");
        let _ = fs::remove_file(&temporary);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o600))?;
        fs::rename(&temporary, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(dir) = fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_and_compare() {
        let token = new_token("cgs_").unwrap();
        let d = digest(&token);
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert!(constant_time_eq(&d, &digest(&token)));
        assert!(!constant_time_eq(&d, &digest("cgs_other")));
    }
}
