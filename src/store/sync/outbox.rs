//! A replica's outbox: queued mutations, their answers, their echoes and when they settle.

use super::*;

impl<'txn> Batch<'txn> {
    fn next_order(&mut self, home: u128) -> Result<u64> {
        let mut record = load::<u128, HomeRecord>(self.sync_homes.open()?, home)?
            .unwrap_or(HomeRecord { next_order: 1 });
        let order = record.next_order;
        record.next_order += 1;
        save(self.sync_homes.open_mut()?, home, &record)?;
        Ok(order)
    }

    /// Registers a home this store syncs with (its outbox order starts at 1).
    pub fn know_home(&mut self, home: u128) -> Result<()> {
        if load::<u128, HomeRecord>(self.sync_homes.open()?, home)?.is_none() {
            save(
                self.sync_homes.open_mut()?,
                home,
                &HomeRecord { next_order: 1 },
            )?;
        }
        Ok(())
    }

    /// Queues a mutation for the home of its group (`home` for a group to create there). A
    /// message shows at once as a local echo (`MessagePending`).
    pub fn enqueue(
        &mut self,
        txn: u128,
        group: u128,
        home: Option<u128>,
        mutation: MutationRecord,
    ) -> Result<OutboxEntry> {
        let home = match (&mutation, home) {
            (MutationRecord::CreateGroup { .. }, Some(home)) => {
                if self.group_id_taken(group)? {
                    return Err(Error::conflict(format!(
                        "group {} already exists",
                        ids::to_string(group)
                    )));
                }
                for familiar in match &mutation {
                    MutationRecord::CreateGroup { members, .. } => members.as_slice(),
                    _ => &[],
                } {
                    self.familiar(familiar)?;
                }
                home
            }
            (_, _) => match self.replica(group)? {
                Some(replica) => replica.home,
                None => {
                    self.head(group)?;
                    return Err(Error::conflict(format!(
                        "group {} is homed in this store: change it directly, not through the \
                         outbox",
                        ids::to_string(group)
                    )));
                }
            },
        };
        let order = self.next_order(home)?;
        let record = OutboxRecord {
            txn,
            group,
            attempt: 0,
            mutation,
            state: StateRecord::Pending,
            created_at: self.now,
        };
        save(self.outbox.open_mut()?, (home, order), &record)?;
        if let Some(message) = record.echo() {
            self.record(group, GroupUpdate::MessagePending { message })?;
        }
        Ok(record.entry(home, order))
    }

    /// The outbox entry with this transaction id.
    fn outbox_entry(&self, txn: u128) -> Result<(u128, u64, OutboxRecord)> {
        for entry in self.outbox.open()?.iter()? {
            let (key, value) = entry?;
            let record: OutboxRecord = codec::decode(value.value())?;
            if record.txn == txn {
                let (home, order) = key.value();
                return Ok((home, order, record));
            }
        }
        Err(Error::not_found("outbox entry", ids::to_string(txn)))
    }

    /// Sends a refused entry again (its next attempt); the outbox goes on behind it.
    pub fn retry_outbox(&mut self, txn: u128) -> Result<OutboxEntry> {
        let (home, order, mut record) = self.outbox_entry(txn)?;
        if !matches!(record.state, StateRecord::Failed { .. }) {
            return Err(Error::conflict(format!(
                "outbox entry {} has not failed; only a refused entry is retried",
                ids::to_string(txn)
            )));
        }
        record.state = StateRecord::Pending;
        record.attempt += 1;
        save(self.outbox.open_mut()?, (home, order), &record)?;
        if let Some(message) = record.echo() {
            self.record_if_present(record.group, GroupUpdate::MessagePending { message })?;
        }
        Ok(record.entry(home, order))
    }

    /// Drops a refused entry (and its echo); the outbox goes on behind it. An entry that may be
    /// on its way home (pending) cannot be discarded: it could still be applied.
    pub fn discard_outbox(&mut self, txn: u128) -> Result<()> {
        let (home, order, record) = self.outbox_entry(txn)?;
        if !matches!(record.state, StateRecord::Failed { .. }) {
            return Err(Error::conflict(format!(
                "outbox entry {} has not failed; a pending entry may still be applied at its \
                 home, so only a refused one is discarded",
                ids::to_string(txn)
            )));
        }
        self.outbox.open_mut()?.remove((home, order))?;
        if record.echo().is_some() {
            self.record_if_present(
                record.group,
                GroupUpdate::MessageDiscarded {
                    txn_id: ids::to_string(txn),
                },
            )?;
        }
        Ok(())
    }

    /// Records a change of a group that may be gone here (an echo of a deleted group).
    pub(super) fn record_if_present(&mut self, group: u128, update: GroupUpdate) -> Result<()> {
        match self.head(group) {
            Ok(_) => self.record(group, update).map(drop),
            Err(Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// The entries of one home's outbox, in order.
    pub(super) fn outbox_of(&self, home: u128) -> Result<Vec<(u64, OutboxRecord)>> {
        let mut out = Vec::new();
        for entry in self.outbox.open()?.range((home, 0)..=(home, u64::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().1, codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// Stores the home's answers to this store's mutations. An answer for an entry that is
    /// gone, or for another transaction or attempt, is a stale copy and changes nothing.
    /// Returns how many entries left the outbox.
    pub fn record_answers(&mut self, home: u128, results: &[MutationResult]) -> Result<u64> {
        let mut settled = 0;
        for result in results {
            let Some(mut record) =
                load::<(u128, u64), OutboxRecord>(self.outbox.open()?, (home, result.order))?
            else {
                continue;
            };
            // Only a pending entry takes an answer, and only one to its current attempt: a
            // late copy of the answer to an attempt the host has retried since is stale.
            if ids::to_string(record.txn) != result.txn_id
                || !matches!(record.state, StateRecord::Pending)
                || (result.attempt != record.attempt
                    && !matches!(result.outcome, MutationOutcome::Applied { .. }))
            {
                continue;
            }
            record.state = match &result.outcome {
                MutationOutcome::Applied { rev, seq, .. } => StateRecord::Applied {
                    rev: *rev,
                    seq: *seq,
                },
                MutationOutcome::Refused {
                    code,
                    reason,
                    retryable,
                } => StateRecord::Failed {
                    code: CodeRecord::of(*code),
                    reason: reason.clone(),
                    retryable: *retryable,
                },
                // Applied, and its answer forgotten: only a store that lost what it had
                // recorded (a non-durable store's crash) gets this. Its effect is already here
                // or on its way; the echo goes now.
                MutationOutcome::AlreadyApplied => StateRecord::Applied { rev: 0, seq: None },
            };
            save(self.outbox.open_mut()?, (home, result.order), &record)?;
            if matches!(record.state, StateRecord::Failed { .. }) {
                if let Some(message) = record.echo() {
                    self.record_if_present(record.group, GroupUpdate::MessagePending { message })?;
                }
            }
        }
        // An answer can arrive after the changes it names (a push answered late).
        let groups: Vec<u128> = self
            .outbox_of(home)?
            .into_iter()
            .map(|(_, record)| record.group)
            .collect();
        for group in dedup(groups) {
            if let Some(replica) = self.replica(group)? {
                settled += self.settle(home, group, replica.home_rev, None)?;
            }
        }
        Ok(settled)
    }

    /// Removes the entries of `group` whose effect has arrived: applied at a home rev up to
    /// `home_rev`. A message leaves with a `MessageDiscarded` change unless `quiet` names the
    /// reset that already dropped its echo.
    pub(super) fn settle(
        &mut self,
        home: u128,
        group: u128,
        home_rev: u64,
        reset_last_seq: Option<u64>,
    ) -> Result<u64> {
        let mut settled = 0;
        for (order, record) in self.outbox_of(home)? {
            if record.group != group {
                continue;
            }
            let StateRecord::Applied { rev, seq } = record.state else {
                continue;
            };
            let arrived = match (reset_last_seq, seq) {
                (Some(last), Some(seq)) => seq <= last || rev <= home_rev,
                _ => rev <= home_rev,
            };
            if !arrived {
                continue;
            }
            self.outbox.open_mut()?.remove((home, order))?;
            settled += 1;
            if record.echo().is_some() && reset_last_seq.is_none() {
                self.record_if_present(
                    group,
                    GroupUpdate::MessageDiscarded {
                        txn_id: ids::to_string(record.txn),
                    },
                )?;
            }
        }
        Ok(settled)
    }

    /// The echoes of one group waiting in the outbox, in order.
    pub(super) fn echoes_of(&self, home: u128, group: u128) -> Result<Vec<PendingMessage>> {
        Ok(self
            .outbox_of(home)?
            .into_iter()
            .filter(|(_, record)| record.group == group)
            .filter_map(|(_, record)| record.echo())
            .collect())
    }
}

fn dedup(mut groups: Vec<u128>) -> Vec<u128> {
    groups.sort_unstable();
    groups.dedup();
    groups
}
