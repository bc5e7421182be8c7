//! Reads of the sync tables.

use super::*;

impl crate::store::Reader {
    /// This store's id, made at its first open.
    pub fn store_id(&self) -> Result<u128> {
        self.txn
            .open_table(IDENTITY)?
            .get(STORE_ID_KEY)?
            .map(|id| id.value())
            .ok_or_else(|| Error::storage("corrupt store: it has no store id"))
    }

    pub fn replica(&self, group: u128) -> Result<Option<ReplicaRecord>> {
        load(&self.txn.open_table(SYNC_REPLICAS)?, group)
    }

    /// Every replica group here with its record.
    pub fn replicas(&self) -> Result<Vec<(u128, ReplicaRecord)>> {
        let table = self.txn.open_table(SYNC_REPLICAS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value(), codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// The outbox entries of one home (every home with `None`), in order.
    pub fn outbox(&self, home: Option<u128>) -> Result<Vec<(u128, u64, OutboxRecord)>> {
        let table = self.txn.open_table(OUTBOX)?;
        let range = match home {
            Some(home) => (home, 0)..=(home, u64::MAX),
            None => (0, 0)..=(u128::MAX, u64::MAX),
        };
        let mut out = Vec::new();
        for entry in table.range(range)? {
            let (key, value) = entry?;
            let (home, order) = key.value();
            out.push((home, order, codec::decode(value.value())?));
        }
        Ok(out)
    }

    /// The local echoes of a group (none for a group homed here).
    pub fn echoes(&self, group: u128) -> Result<Vec<PendingMessage>> {
        let Some(replica) = self.replica(group)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .outbox(Some(replica.home))?
            .into_iter()
            .filter(|(_, _, record)| record.group == group)
            .filter_map(|(_, _, record)| record.echo())
            .collect())
    }

    /// The stored answers to a replica's mutations after `acked_through`.
    pub fn answers(&self, replica: u128, acked_through: u64) -> Result<Vec<MutationResult>> {
        let table = self.txn.open_table(SYNC_RESULTS)?;
        let mut out = Vec::new();
        for entry in
            table.range((replica, acked_through.saturating_add(1))..=(replica, u64::MAX))?
        {
            let (key, value) = entry?;
            let record: ResultRecord = codec::decode(value.value())?;
            out.push(record.result(key.value().1));
        }
        Ok(out)
    }

    /// A home group's whole state for a replica.
    pub fn sync_snapshot(&self, group: u128) -> Result<SyncSnapshot> {
        let snapshot = self.snapshot(group)?;
        Ok(SyncSnapshot {
            sessions: self.sessions_of(group)?,
            group: snapshot.group,
            events: snapshot.events,
            rev: snapshot.rev,
        })
    }

    /// Every group homed in this store (not replicas), by id.
    pub fn home_groups(&self) -> Result<Vec<u128>> {
        let groups = self.txn.open_table(GROUPS)?;
        let replicas = self.txn.open_table(SYNC_REPLICAS)?;
        let mut out = Vec::new();
        for entry in groups.iter()? {
            let group = entry?.0.value();
            if replicas.get(group)?.is_none() {
                out.push(group);
            }
        }
        Ok(out)
    }
}

impl crate::store::Reader {
    /// The order the next outbox entry for `home` gets.
    pub fn next_order(&self, home: u128) -> Result<u64> {
        Ok(
            load::<u128, HomeRecord>(&self.txn.open_table(SYNC_HOMES)?, home)?
                .map_or(1, |record| record.next_order),
        )
    }
}
