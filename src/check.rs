//! `Coven::check`: the store's integrity check, exported to every binding. The verification
//! itself lives in [`crate::store::check`]; this is only its entry point.

use crate::coven::Coven;
use crate::error::Result;
use crate::model::IntegrityReport;
use crate::store::check;

#[uniffi::export]
impl Coven {
    /// Verifies every invariant that can be read back from the store, as of one commit: seq
    /// contiguous per group, the change log consistent with the events, one session per member,
    /// nothing streaming or running without a running turn, cursors within their head, nothing
    /// left of a deleted group. Returns every problem found (an empty list for a healthy store)
    /// with what was checked. Runs on the caller's thread beside the writer; a read error is
    /// `Storage`, and so is a damaged file that makes the storage engine panic (the panic is
    /// contained; the store is not modified).
    pub fn check(&self) -> Result<IntegrityReport> {
        self.read(check::verify)
    }
}
