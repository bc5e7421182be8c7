//! The home's side: each replica's mutations applied once, their answers kept until acknowledged.

use super::*;

impl<'txn> Batch<'txn> {
    /// The answer already given to a replica's mutation, if this is a copy of one processed:
    /// an order applied before (its stored answer, or `AlreadyApplied` once acknowledged), or
    /// the same attempt of a refused one.
    pub fn remote_answer(
        &self,
        replica: u128,
        order: u64,
        txn: u128,
        attempt: u32,
    ) -> Result<Option<MutationResult>> {
        let last_applied = self
            .sync_clients
            .open()?
            .get(replica)?
            .map_or(0, |v| v.value());
        let stored: Option<ResultRecord> = load(self.sync_results.open()?, (replica, order))?;
        if order <= last_applied {
            return Ok(Some(match stored {
                Some(stored) => stored.result(order),
                None => MutationResult {
                    order,
                    txn_id: ids::to_string(txn),
                    attempt,
                    group_id: String::new(),
                    outcome: MutationOutcome::AlreadyApplied,
                },
            }));
        }
        Ok(stored
            .filter(|stored| stored.txn == txn && stored.attempt >= attempt)
            .map(|stored| stored.result(order)))
    }

    /// Records the answer to a replica's mutation in the transaction that applied it (or
    /// refused it): a copy of it is then answered from here, never applied again.
    pub fn record_remote(
        &mut self,
        replica: u128,
        order: u64,
        record: &ResultRecord,
    ) -> Result<()> {
        save(self.sync_results.open_mut()?, (replica, order), record)?;
        if matches!(record.outcome, OutcomeRecord::Applied { .. }) {
            self.sync_clients.open_mut()?.insert(replica, order)?;
        }
        Ok(())
    }

    /// Forgets the answers a replica has stored. Every mutation of it up to `acked_through` is
    /// settled there (applied, or refused and discarded by its host), so none of them is
    /// applied from now on: a late copy of one is answered `AlreadyApplied`.
    pub fn forget_answers(&mut self, replica: u128, acked_through: u64) -> Result<()> {
        if acked_through == 0 {
            return Ok(());
        }
        self.sync_results
            .open_mut()?
            .retain_in((replica, 0)..=(replica, acked_through), |_, _| false)?;
        let last_applied = self
            .sync_clients
            .open()?
            .get(replica)?
            .map_or(0, |v| v.value());
        if acked_through > last_applied {
            self.sync_clients
                .open_mut()?
                .insert(replica, acked_through)?;
        }
        Ok(())
    }
}
