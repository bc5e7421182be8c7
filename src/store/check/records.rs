//! The records of the store: schema, familiars, heads, groups, turn locks, sessions and
//! member entries, cursors, and anything left of a group that no longer exists.

use super::*;

impl Check {
    pub(super) fn schema(&mut self, reader: &Reader) -> Result<()> {
        let meta = reader.txn.open_table(META)?;
        match meta.get(SCHEMA_KEY)?.map(|v| v.value()) {
            Some(SCHEMA_VERSION) => {}
            Some(version) => self.problem(
                None,
                Kind::Schema,
                format!("schema version {version}; this release reads {SCHEMA_VERSION}"),
            ),
            None => self.problem(None, Kind::Schema, "no schema version"),
        }
        Ok(())
    }

    pub(super) fn familiars(&mut self, reader: &Reader) -> Result<HashSet<String>> {
        let table = reader.txn.open_table(FAMILIARS)?;
        let mut out = HashSet::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            let Some(familiar) = self.decoded(
                None,
                || format!("familiar {key:?}"),
                stored::decode_familiar(key, value.value()),
            ) else {
                continue;
            };
            if familiar.id != key {
                self.problem(
                    None,
                    Kind::CorruptRecord,
                    format!("familiar stored under {key:?} has id {:?}", familiar.id),
                );
            }
            out.insert(key.to_owned());
        }
        self.report.familiars = out.len() as u64;
        Ok(out)
    }

    pub(super) fn heads(&mut self, reader: &Reader) -> Result<BTreeMap<u128, Head>> {
        let table = reader.txn.open_table(HEADS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            if let Some(head) = self.decode::<Head>(Some(group), || "head".into(), value.value()) {
                if head.next_seq == 0 || head.next_rev == 0 {
                    self.problem(
                        Some(group),
                        Kind::CorruptRecord,
                        format!("head counts from 0: {head:?}"),
                    );
                    continue;
                }
                out.insert(group, head);
            }
        }
        Ok(out)
    }

    /// The groups that have both a record and a head; either alone is dangling.
    pub(super) fn groups(
        &mut self,
        reader: &Reader,
        heads: &BTreeMap<u128, Head>,
    ) -> Result<BTreeMap<u128, GroupConversation>> {
        let table = reader.txn.open_table(GROUPS)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            let Some(record) = self.decoded(
                Some(group),
                || "group".into(),
                stored::decode_group(group, value.value()),
            ) else {
                continue;
            };
            if record.id != ids::to_string(group) {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("group record has id {}", record.id),
                );
            }
            if heads.contains_key(&group) {
                out.insert(group, record);
            } else {
                self.problem(Some(group), Kind::Dangling, "group has no head");
            }
        }
        for &group in heads.keys() {
            if !out.contains_key(&group) && table.get(group)?.is_none() {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    "head of a group with no record",
                );
            }
        }
        self.report.groups = out.len() as u64;
        Ok(out)
    }

    pub(super) fn turns(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
    ) -> Result<HashMap<u128, TurnRecord>> {
        let table = reader.txn.open_table(TURNS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let group = key.value();
            let Some(turn) =
                self.decode::<TurnRecord>(Some(group), || "turn lock".into(), value.value())
            else {
                continue;
            };
            if groups.contains_key(&group) {
                out.insert(group, turn);
            } else {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!(
                        "turn lock {} of a group that does not exist",
                        ids::to_string(turn.turn_id)
                    ),
                );
            }
        }
        self.report.running_turns = out.len() as u64;
        Ok(out)
    }

    /// The replica groups (their turns run at their homes); a replica record of a group that
    /// does not exist is dangling.
    pub(super) fn replicas(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
    ) -> Result<HashSet<u128>> {
        let mut out = HashSet::new();
        for (group, _) in reader.replicas()? {
            if groups.contains_key(&group) {
                out.insert(group);
            } else {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    "a replica record names a group that does not exist".to_owned(),
                );
            }
        }
        Ok(out)
    }

    pub(super) fn sessions(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
        turns: &HashMap<u128, TurnRecord>,
        replicas: &HashSet<u128>,
    ) -> Result<HashMap<u128, Session>> {
        let table = reader.txn.open_table(SESSIONS)?;
        let index = reader.txn.open_table(GROUP_SESSIONS)?;
        let mut out = HashMap::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let id = key.value();
            let what = || format!("session {}", ids::to_string(id));
            let Some(session) = self.decoded(None, what, stored::decode_session(id, value.value()))
            else {
                continue;
            };
            if session.id != ids::to_string(id) {
                self.problem(
                    None,
                    Kind::CorruptRecord,
                    format!("session stored under {} has id {}", what(), session.id),
                );
            }
            let group = match ids::parse("group_id", &session.group_id) {
                Ok(group) if groups.contains_key(&group) => group,
                _ => {
                    self.problem(
                        None,
                        Kind::Dangling,
                        format!("{} belongs to missing group {}", what(), session.group_id),
                    );
                    continue;
                }
            };
            if index.get((group, id))?.is_none() {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("{} is missing from the group's session index", what()),
                );
            }
            if session.status == SessionStatus::Running {
                self.report.running_sessions += 1;
                let awaited = turns.get(&group).is_some_and(|turn| {
                    turn.pending.contains(&session.familiar_id)
                        && groups[&group].session_of(&session.familiar_id)
                            == Some(session.id.as_str())
                });
                // A replica's sessions run at its home, which ends them.
                if !awaited && !replicas.contains(&group) {
                    self.problem(
                        Some(group),
                        Kind::RunningWithoutTurn,
                        format!(
                            "{} of {:?} is running but no running turn waits for it",
                            what(),
                            session.familiar_id
                        ),
                    );
                }
            }
            out.insert(id, session);
        }
        for entry in index.iter()? {
            let (key, _) = entry?;
            let (group, session) = key.value();
            let owner = out.get(&session).map(|s| s.group_id.clone());
            if owner != Some(ids::to_string(group)) {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!(
                        "session index names session {} which {}",
                        ids::to_string(session),
                        match owner {
                            Some(owner) => format!("belongs to group {owner}"),
                            None => "does not exist".to_owned(),
                        }
                    ),
                );
            }
        }
        self.report.sessions = out.len() as u64;
        Ok(out)
    }

    pub(super) fn members(
        &mut self,
        reader: &Reader,
        group: u128,
        record: &GroupConversation,
        sessions: &HashMap<u128, Session>,
        familiars: &HashSet<String>,
    ) -> Result<()> {
        let index = reader.txn.open_table(GROUP_SESSIONS)?;
        let mut seen_familiars = HashSet::new();
        let mut seen_sessions = HashSet::new();
        for member in &record.members {
            let familiar = &member.familiar_id;
            if !seen_familiars.insert(familiar.as_str()) {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!("{familiar:?} is a member twice"),
                );
            }
            if !familiars.contains(familiar) {
                self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("member {familiar:?} is not a registered familiar"),
                );
            }
            if !seen_sessions.insert(member.session_id.as_str()) {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "session {} is the session of two members",
                        member.session_id
                    ),
                );
            }
            let Ok(id) = ids::parse("session_id", &member.session_id) else {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("member {familiar:?} has session id {:?}", member.session_id),
                );
                continue;
            };
            let Some(session) = sessions.get(&id) else {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "member {familiar:?} has no session: {} does not exist",
                        member.session_id
                    ),
                );
                continue;
            };
            if session.group_id != record.id || &session.familiar_id != familiar {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "member {familiar:?} has session {} of familiar {:?} in group {}",
                        member.session_id, session.familiar_id, session.group_id
                    ),
                );
            }
            if index.get((group, id))?.is_none() {
                self.problem(
                    Some(group),
                    Kind::MemberSession,
                    format!(
                        "session {} of member {familiar:?} is missing from the group's index",
                        member.session_id
                    ),
                );
            }
        }
        Ok(())
    }

    pub(super) fn cursors(&mut self, reader: &Reader, heads: &BTreeMap<u128, Head>) -> Result<()> {
        let table = reader.txn.open_table(CURSORS)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (group, consumer) = key.value();
            let rev = value.value();
            self.report.cursors += 1;
            match heads.get(&group) {
                None => self.problem(
                    Some(group),
                    Kind::Dangling,
                    format!("cursor {consumer:?} of a group that does not exist"),
                ),
                Some(head) if rev > head.rev() => self.problem(
                    Some(group),
                    Kind::CursorBeyondHead,
                    format!(
                        "cursor {consumer:?} is at rev {rev}, beyond the latest rev {}",
                        head.rev()
                    ),
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Events, chunks and changes of groups that do not exist (one problem per group and table).
    pub(super) fn orphans(
        &mut self,
        reader: &Reader,
        groups: &BTreeMap<u128, GroupConversation>,
    ) -> Result<()> {
        let mut found: BTreeMap<(u128, &str), u64> = BTreeMap::new();
        let events = reader.txn.open_table(EVENTS)?;
        let changes = reader.txn.open_table(CHANGES)?;
        let chunks = reader.txn.open_table(REPLY_CHUNKS)?;
        // Every key belongs to a known group in a healthy store, so only the counts are compared
        // first and the tables are walked only when they disagree.
        if events.len()? != self.report.events {
            for entry in events.iter()? {
                let group = entry?.0.value().0;
                if !groups.contains_key(&group) {
                    *found.entry((group, "events")).or_default() += 1;
                }
            }
        }
        if changes.len()? != self.report.changes {
            for entry in changes.iter()? {
                let group = entry?.0.value().0;
                if !groups.contains_key(&group) {
                    *found.entry((group, "changes")).or_default() += 1;
                }
            }
        }
        for entry in chunks.iter()? {
            let group = entry?.0.value().0;
            if !groups.contains_key(&group) {
                *found.entry((group, "reply chunks")).or_default() += 1;
            }
        }
        for ((group, table), count) in found {
            self.problem(
                Some(group),
                Kind::Dangling,
                format!("{count} {table} of a group that does not exist"),
            );
        }
        Ok(())
    }
}
