//! A replica applying its home's pull answers: changes in rev order, snapshots, deletions.

use super::*;

impl<'txn> Batch<'txn> {
    /// Applies a home's pull answer (checked by the caller: version, ids, this store is not the
    /// home): familiars, answers to the outbox, then each group's changes, snapshot or deletion.
    /// Changes a replica already applied are skipped; changes that do not start right after
    /// them are refused (`Conflict` naming the rev needed) before anything is written.
    pub fn apply_pull(
        &mut self,
        home: u128,
        groups: Vec<GroupPull>,
        familiars: Vec<Familiar>,
        results: &[MutationResult],
        more: bool,
    ) -> Result<PullApplied> {
        // Everything that can refuse is checked before the first write.
        let mut plan = Vec::with_capacity(groups.len());
        for pull in groups {
            if let Some(step) = self.plan_group(home, pull)? {
                plan.push(step);
            }
        }
        // Past this point the answer was checked: a failure may follow a write, so it aborts
        // the batch (`Storage`) rather than refusing one operation of it.
        self.apply_plan(home, plan, &familiars, results, more)
            .map_err(|err| match err {
                Error::Storage { .. } | Error::Closed => err,
                other => Error::storage(format!("the home's answer could not be applied: {other}")),
            })
    }

    fn apply_plan(
        &mut self,
        home: u128,
        plan: Vec<Step>,
        familiars: &[Familiar],
        results: &[MutationResult],
        more: bool,
    ) -> Result<PullApplied> {
        self.know_home(home)?;
        for familiar in familiars {
            self.familiars.open_mut()?.insert(
                familiar.id.as_str(),
                records::encode_familiar(familiar)?.as_slice(),
            )?;
        }
        let mut applied = PullApplied {
            more,
            ..PullApplied::default()
        };
        applied.settled += self.record_answers(home, results)?;
        for step in plan {
            match step {
                Step::Changes {
                    group,
                    through_rev,
                    changes,
                } => {
                    applied.changes += changes.len() as u64;
                    applied.settled += self.apply_changes(home, group, through_rev, changes)?;
                }
                Step::Snapshot { group, snapshot } => {
                    applied.snapshots += 1;
                    applied.settled += self.apply_snapshot(home, group, snapshot)?;
                }
                Step::Deleted { group } => {
                    applied.deleted += 1;
                    applied.settled += self.drop_replica(home, group)?;
                }
            }
        }
        Ok(applied)
    }

    /// What one group's part of a pull answer will do here, or `None` when it is stale.
    fn plan_group(&mut self, home: u128, pull: GroupPull) -> Result<Option<Step>> {
        let group = ids::parse(
            "group_id",
            match &pull {
                GroupPull::Changes { group_id, .. } | GroupPull::Deleted { group_id } => group_id,
                GroupPull::Snapshot { snapshot } => &snapshot.group.id,
            },
        )?;
        if self.sync_tombstones.open()?.get(group)?.is_some() {
            return Ok(None);
        }
        let replica = self.replica(group)?;
        if let Some(replica) = replica {
            if replica.home != home {
                return Err(Error::conflict(format!(
                    "group {} is a replica of store {}, not of {}",
                    ids::to_string(group),
                    ids::to_string(replica.home),
                    ids::to_string(home)
                )));
            }
        } else if self.groups.open()?.get(group)?.is_some() {
            return Err(Error::conflict(format!(
                "group {} is homed in this store; store {} cannot send it",
                ids::to_string(group),
                ids::to_string(home)
            )));
        }
        Ok(match pull {
            GroupPull::Deleted { .. } => Some(Step::Deleted { group }),
            GroupPull::Snapshot { snapshot } => match replica {
                Some(replica) if replica.home_rev >= snapshot.rev => None,
                _ => Some(Step::Snapshot { group, snapshot }),
            },
            GroupPull::Changes {
                after_rev,
                through_rev,
                changes,
                ..
            } => {
                // Changes for a group not held here are for one this store dropped since.
                let Some(replica) = replica else {
                    return Ok(None);
                };
                if after_rev > replica.home_rev {
                    return Err(Error::conflict(format!(
                        "changes of group {} start after home rev {after_rev}: this store has \
                         applied up to rev {} and needs rev {} next; pull again from rev {}",
                        ids::to_string(group),
                        replica.home_rev,
                        replica.home_rev + 1,
                        replica.home_rev
                    )));
                }
                if through_rev <= replica.home_rev {
                    return Ok(None);
                }
                let fresh: Vec<GroupChange> = changes
                    .into_iter()
                    .filter(|change| change.rev > replica.home_rev)
                    .collect();
                Some(Step::Changes {
                    group,
                    through_rev,
                    changes: fresh,
                })
            }
        })
    }

    /// Applies a group's home changes in rev order, each as the same change here. Returns the
    /// outbox entries settled.
    fn apply_changes(
        &mut self,
        home: u128,
        group: u128,
        through_rev: u64,
        changes: Vec<GroupChange>,
    ) -> Result<u64> {
        // The messages whose events are on their way: seq → (order, txn).
        let mut sent: HashMap<u64, (u64, u128)> = HashMap::new();
        for (order, record) in self.outbox_of(home)? {
            if let (true, StateRecord::Applied { seq: Some(seq), .. }) =
                (record.group == group, &record.state)
            {
                if record.echo().is_some() {
                    sent.insert(*seq, (order, record.txn));
                }
            }
        }
        let mut settled = 0;
        for change in changes {
            if change.rev > through_rev {
                return Err(Error::storage(format!(
                    "the home sent rev {} of group {} in an answer through rev {through_rev}",
                    change.rev,
                    ids::to_string(group)
                )));
            }
            match change.update {
                GroupUpdate::GroupCreated { group: state }
                | GroupUpdate::GroupChanged { group: state } => {
                    self.replicate_group(group, state, false)?;
                }
                GroupUpdate::EventAppended { event } => {
                    let seq = event.seq;
                    match sent.remove(&seq) {
                        Some((order, txn)) => {
                            let event = self.insert_replicated_event(group, event)?;
                            self.record(
                                group,
                                GroupUpdate::MessageSent {
                                    txn_id: ids::to_string(txn),
                                    event,
                                },
                            )?;
                            self.outbox.open_mut()?.remove((home, order))?;
                            settled += 1;
                        }
                        None => {
                            let event = self.insert_replicated_event(group, event)?;
                            self.record(group, GroupUpdate::EventAppended { event })?;
                        }
                    }
                }
                GroupUpdate::ReplyDelta {
                    seq,
                    familiar_id,
                    text,
                } => {
                    self.streaming_event(group, seq)?;
                    self.store_delta(group, seq, familiar_id, text)?;
                }
                GroupUpdate::ReplyFinished { event } => {
                    self.finish_replicated_reply(group, event)?;
                }
                GroupUpdate::SessionChanged { session } => {
                    self.replicate_session(group, &session)?;
                    self.record(group, GroupUpdate::SessionChanged { session })?;
                }
                GroupUpdate::SessionSacrificed { session_id } => {
                    let session = ids::parse_stored("session id", &session_id)?;
                    self.sessions.open_mut()?.remove(session)?;
                    self.group_sessions.open_mut()?.remove((group, session))?;
                    self.record(group, GroupUpdate::SessionSacrificed { session_id })?;
                }
                GroupUpdate::GroupDeleted => {
                    return Ok(settled + self.drop_replica(home, group)?);
                }
                GroupUpdate::GroupReset { .. }
                | GroupUpdate::MessagePending { .. }
                | GroupUpdate::MessageSent { .. }
                | GroupUpdate::MessageDiscarded { .. } => {
                    return Err(Error::storage(format!(
                        "home rev {} of group {} is a replica's local change, which a home \
                         never sends",
                        change.rev,
                        ids::to_string(group)
                    )));
                }
            }
        }
        let home_rev = through_rev;
        self.store_replica(group, &ReplicaRecord { home, home_rev })?;
        Ok(settled + self.settle(home, group, home_rev, None)?)
    }

    /// Stores a group's state as its home sent it: sessions for members new here (as the home
    /// provisioned them: idle, made at the change), then the group and its change.
    fn replicate_group(
        &mut self,
        group: u128,
        state: GroupConversation,
        created: bool,
    ) -> Result<()> {
        for member in &state.members {
            let session = ids::parse_stored("member session id", &member.session_id)?;
            if self.sessions.open()?.get(session)?.is_none() {
                let familiar = self.familiar(&member.familiar_id)?;
                self.replicate_session(
                    group,
                    &Session {
                        id: member.session_id.clone(),
                        group_id: state.id.clone(),
                        familiar_id: familiar.id,
                        harness: familiar.harness,
                        status: crate::model::SessionStatus::Idle,
                        resume_token: None,
                        archived: false,
                        created_at: state.updated_at,
                        updated_at: state.updated_at,
                    },
                )?;
            }
        }
        self.groups
            .open_mut()?
            .insert(group, records::encode_group(&state)?.as_slice())?;
        let update = if created {
            GroupUpdate::GroupCreated { group: state }
        } else {
            GroupUpdate::GroupChanged { group: state }
        };
        self.record(group, update)?;
        Ok(())
    }

    fn replicate_session(&mut self, group: u128, session: &Session) -> Result<()> {
        self.store_session(session)?;
        let key = ids::parse_stored("session id", &session.id)?;
        self.group_sessions.open_mut()?.insert((group, key), ())?;
        Ok(())
    }

    /// Appends the home's event at the same seq; a seq that is not this group's next means the
    /// replica and its home disagree, which no retry repairs.
    fn insert_replicated_event(&mut self, group: u128, event: GroupEvent) -> Result<GroupEvent> {
        let next = self.head(group)?.next_seq;
        if event.seq != next {
            return Err(Error::storage(format!(
                "the home sent event {} of group {} where this replica's next seq is {next}",
                event.seq,
                ids::to_string(group)
            )));
        }
        self.insert_event(group, NewEvent::replicated(event))
    }

    /// The stored event of a reply the home streams into; it must be streaming here too.
    fn streaming_event(&self, group: u128, seq: u64) -> Result<GroupEvent> {
        let event = match self.events.open()?.get((group, seq))? {
            Some(value) => records::decode_event(group, seq, value.value())?,
            None => {
                return Err(Error::storage(format!(
                    "the home streamed into event {seq} of group {}, which this replica lacks",
                    ids::to_string(group)
                )))
            }
        };
        if !event.streaming {
            return Err(Error::storage(format!(
                "the home streamed into event {seq} of group {}, which has finished here",
                ids::to_string(group)
            )));
        }
        Ok(event)
    }

    /// Finishes a streaming reply with the home's final event (its text is the home's).
    fn finish_replicated_reply(&mut self, group: u128, home_event: GroupEvent) -> Result<()> {
        let seq = home_event.seq;
        let mut event = self.streaming_event(group, seq)?;
        // The text is the home's; the chunks go, and the deltas that streamed them collapse.
        self.take_streamed_text(group, seq, event.rev)?;
        event.text = home_event.text;
        event.streaming = false;
        event.error = home_event.error;
        event.rev = self.peek_rev(group)?;
        self.events
            .open_mut()?
            .insert((group, seq), records::encode_event(&event)?.as_slice())?;
        self.record(group, GroupUpdate::ReplyFinished { event })?;
        Ok(())
    }

    /// Replaces what this store holds of a group with the home's snapshot, atomically, and
    /// records one `GroupReset` carrying it. The replica's earlier log stays valid (events only
    /// grow), so a reader behind it reads on into the reset.
    fn apply_snapshot(&mut self, home: u128, group: u128, snapshot: SyncSnapshot) -> Result<u64> {
        let existed = self.replica(group)?.is_some();
        if existed {
            // Its log stays (events only grow, so it stays exact); its head keeps its rev.
            self.remove_timeline(group)?;
        } else {
            self.create_head(group);
        }
        for familiar_id in snapshot.group.members.iter().map(|m| &m.familiar_id) {
            self.familiar(familiar_id)?;
        }
        for session in &snapshot.sessions {
            self.replicate_session(group, session)?;
        }
        self.groups
            .open_mut()?
            .insert(group, records::encode_group(&snapshot.group)?.as_slice())?;
        let rev = self.peek_rev(group)?;
        let mut events = Vec::with_capacity(snapshot.events.len());
        let mut last_seq = 0;
        for (index, mut event) in snapshot.events.into_iter().enumerate() {
            if event.seq != index as u64 + 1 {
                return Err(Error::storage(format!(
                    "the home's snapshot of group {} holds event {} at position {}",
                    ids::to_string(group),
                    event.seq,
                    index + 1
                )));
            }
            event.rev = rev;
            self.store_event_as_is(group, &event)?;
            last_seq = event.seq;
            events.push(event);
        }
        self.set_next_seq(group, last_seq + 1)?;
        self.store_replica(
            group,
            &ReplicaRecord {
                home,
                home_rev: snapshot.rev,
            },
        )?;
        let settled = self.settle(home, group, snapshot.rev, Some(last_seq))?;
        let pending = self.echoes_of(home, group)?;
        let mut state = snapshot.group;
        state.updated_at = self.now;
        self.record_as(
            group,
            GroupUpdate::GroupReset {
                group: state,
                events,
                pending,
            },
            &ChangeRecord::Reset { last_seq },
        )?;
        Ok(settled)
    }

    /// Deletes a replica group its home deleted, and remembers it so a stale snapshot does not
    /// bring it back. Entries applied to it leave the outbox; others stay, to be refused by the
    /// home and discarded by the host.
    fn drop_replica(&mut self, home: u128, group: u128) -> Result<u64> {
        if self.replica(group)?.is_some() {
            self.delete_group(group)?;
            self.sync_replicas.open_mut()?.remove(group)?;
        }
        self.sync_tombstones.open_mut()?.insert(group, home)?;
        let mut settled = 0;
        for (order, record) in self.outbox_of(home)? {
            if record.group == group && matches!(record.state, StateRecord::Applied { .. }) {
                self.outbox.open_mut()?.remove((home, order))?;
                settled += 1;
            }
        }
        Ok(settled)
    }
}

/// One group's part of a pull answer, checked.
enum Step {
    Changes {
        group: u128,
        /// The home rev the replica holds once they are applied.
        through_rev: u64,
        changes: Vec<GroupChange>,
    },
    Snapshot {
        group: u128,
        snapshot: SyncSnapshot,
    },
    Deleted {
        group: u128,
    },
}
