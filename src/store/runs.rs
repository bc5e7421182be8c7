//! Recorded harness process runs. While a run lasts, its process group, the marker in the
//! environment of every process it starts and the boot it started in are kept in
//! `process_runs`; the record goes when the run ends. A record found at open belongs to a run
//! whose host died: recovery stops what is left of it ([`process::stop_leftovers`], which only
//! kills processes that prove to be the run's) and forgets the record.

use redb::ReadableTable;

use super::batch::Batch;
use super::writer::WriterHandle;
use crate::error::Result;

/// One run's process group, as recorded in the store while the run lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRun {
    /// The run's id, in the environment of every process of the run.
    pub marker: u128,
    /// The process group (the pid of the process the run started).
    pub pgid: i32,
    /// The kernel's boot id when the run started (empty where the system has none).
    pub boot_id: String,
}

/// Records a started run and waits until the record is committed (durable when the store is).
/// Every run is recorded through this one function.
pub fn record(writer: &WriterHandle, run: &ProcessRun) -> Result<RecordedRun> {
    let stored = run.clone();
    writer.call(move |batch| batch.record_run(&stored))?;
    Ok(RecordedRun {
        writer: writer.clone(),
        marker: run.marker,
    })
}

/// A run whose record is in the store.
#[must_use = "a recorded run's record must be released when the run is over"]
pub struct RecordedRun {
    writer: WriterHandle,
    marker: u128,
}

impl RecordedRun {
    /// Drops the record once nothing of the run is left. Queued, not waited for: a record that
    /// outlives a crash only makes the next open look for processes that are gone, and the
    /// removal usually shares a commit with the reply's own ending.
    pub fn release(self) {
        let marker = self.marker;
        // A closed writer means the store is closing; the next open forgets the record.
        self.writer.submit(move |batch| batch.forget_run(marker));
    }
}

impl Batch<'_> {
    fn record_run(&mut self, run: &ProcessRun) -> Result<()> {
        self.process_runs
            .open_mut()?
            .insert(run.marker, (run.pgid, run.boot_id.as_str()))?;
        Ok(())
    }

    fn forget_run(&mut self, marker: u128) -> Result<()> {
        self.process_runs.open_mut()?.remove(marker)?;
        Ok(())
    }

    /// Recovery: stops what is left of every recorded run and forgets every record. Returns how
    /// many processes were killed. The kill happens inside the recovery batch, before anything
    /// else is served; it is idempotent, so if the batch does not commit the next open finds the
    /// records again and kills whatever is still there.
    pub fn stop_recorded_runs(
        &mut self,
        stop_leftovers: impl FnOnce(&[ProcessRun]) -> u64,
    ) -> Result<u64> {
        let mut runs = Vec::new();
        for entry in self.process_runs.open()?.iter()? {
            let (marker, value) = entry?;
            let (pgid, boot_id) = value.value();
            runs.push(ProcessRun {
                marker: marker.value(),
                pgid,
                boot_id: boot_id.to_owned(),
            });
        }
        if runs.is_empty() {
            return Ok(0);
        }
        let stopped = stop_leftovers(&runs);
        self.process_runs.open_mut()?.retain(|_, _| false)?;
        Ok(stopped)
    }
}
