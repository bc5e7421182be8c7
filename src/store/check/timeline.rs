//! One group's timeline: events, reply chunks and the change log checked against each other,
//! and the turn lock against what is streaming and running.

use super::*;

/// What the timeline check learns about one stored event.
pub(super) struct Stored {
    kind: EventKind,
    familiar_id: Option<String>,
    turn_id: Option<String>,
    streaming: bool,
    /// The stored rev, raised to the latest chunk's for a streaming reply.
    rev: u64,
    /// Fingerprint of the stored event with its text left out.
    shape: u64,
    /// Fingerprint of the event's full text (chunks included for a streaming reply).
    text: Fnv,
}

/// What the change log says about one seq.
#[derive(Default)]
pub(super) struct Logged {
    appended: u32,
    latest_rev: u64,
    /// Fingerprint (text left out) of the latest change that carried the whole event.
    shape: Option<u64>,
    /// The appended text plus every delta, in rev order.
    streamed: Fnv,
    /// The text a `ReplyFinished` carried.
    finished: Option<Fnv>,
    /// A replica's reset wrote the event (its text then is not in the log).
    reset: bool,
}

impl Check {
    /// Events, reply chunks and the change log of one group, checked against each other.
    pub(super) fn timeline(
        &mut self,
        reader: &Reader,
        group: u128,
        head: Head,
        turn: Option<&TurnRecord>,
        replica: bool,
    ) -> Result<BTreeMap<u64, Stored>> {
        let group_id = ids::to_string(group);
        let mut stored = self.events(reader, group, &group_id, head)?;
        self.chunks(reader, group, head, turn, &mut stored)?;
        let logged = self.changes(reader, group, &group_id, head, &stored, replica)?;

        for (&seq, event) in &stored {
            let Some(log) = logged.get(&seq) else {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} has no change in the log"),
                );
                continue;
            };
            if log.appended != 1 {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} was appended {} times in the log", log.appended),
                );
            }
            if event.rev != log.latest_rev {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "event {seq} has rev {} but its latest change is rev {}",
                        event.rev, log.latest_rev
                    ),
                );
            }
            if log.shape.is_some_and(|shape| shape != event.shape) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} differs from the event its latest change carried"),
                );
            }
            let carried = match (log.finished, log.reset) {
                (Some(finished), _) => Some(finished),
                (None, false) => Some(log.streamed),
                // Written by a reset and not finished since: the log does not hold its text.
                (None, true) => None,
            };
            if carried.is_some_and(|carried| event.text != carried) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("event {seq} holds text other than what its changes carried"),
                );
            }
            if event.streaming {
                self.report.streaming_replies += 1;
                let awaited = turn.is_some_and(|turn| {
                    event.turn_id == Some(ids::to_string(turn.turn_id))
                        && event
                            .familiar_id
                            .as_ref()
                            .is_some_and(|f| turn.pending.contains(f))
                });
                // A replica's replies stream at its home, which ends them.
                if event.kind != EventKind::Familiar || !(awaited || replica) {
                    self.problem(
                        Some(group),
                        Kind::StreamingWithoutTurn,
                        format!(
                            "event {seq} ({:?} of {:?}, turn {:?}) is streaming but no running \
                             turn waits for it",
                            event.kind, event.familiar_id, event.turn_id
                        ),
                    );
                }
            }
        }
        Ok(stored)
    }

    pub(super) fn events(
        &mut self,
        reader: &Reader,
        group: u128,
        group_id: &str,
        head: Head,
    ) -> Result<BTreeMap<u64, Stored>> {
        let table = reader.txn.open_table(EVENTS)?;
        let mut stored = BTreeMap::new();
        let mut expected = 1;
        for entry in table.range((group, 0)..=(group, u64::MAX))? {
            let (key, value) = entry?;
            let seq = key.value().1;
            self.report.events += 1;
            if seq != expected {
                self.problem(
                    Some(group),
                    Kind::SeqNotContiguous,
                    format!("seq {seq} follows seq {}", expected - 1),
                );
            }
            expected = seq.saturating_add(1);
            let Some(mut event) = self.decoded(
                Some(group),
                || format!("event {seq}"),
                stored::decode_event(group, seq, value.value()),
            ) else {
                continue;
            };
            if event.seq != seq || event.group_id != group_id {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!(
                        "event stored at seq {seq} says group {} seq {}",
                        event.group_id, event.seq
                    ),
                );
            }
            if event.rev == 0 || event.rev > head.rev() {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "event {seq} has rev {} outside 1..={}",
                        event.rev,
                        head.rev()
                    ),
                );
            }
            if event.streaming && !event.text.is_empty() {
                self.problem(
                    Some(group),
                    Kind::CorruptRecord,
                    format!("streaming reply {seq} holds text outside its chunks"),
                );
            }
            let text = Fnv::of(event.text.as_bytes());
            event.text.clear();
            stored.insert(
                seq,
                Stored {
                    kind: event.kind,
                    familiar_id: event.familiar_id.clone(),
                    turn_id: event.turn_id.clone(),
                    streaming: event.streaming,
                    rev: event.rev,
                    shape: shape(&event)?,
                    text,
                },
            );
        }
        if expected - 1 != head.seq() {
            self.problem(
                Some(group),
                Kind::SeqNotContiguous,
                format!(
                    "the head's latest seq is {} but the events end at seq {}",
                    head.seq(),
                    expected - 1
                ),
            );
        }
        Ok(stored)
    }

    /// A streaming reply's chunks complete its text and raise its rev; any other chunk is
    /// streamed text without a streaming reply.
    pub(super) fn chunks(
        &mut self,
        reader: &Reader,
        group: u128,
        head: Head,
        turn: Option<&TurnRecord>,
        stored: &mut BTreeMap<u64, Stored>,
    ) -> Result<()> {
        let table = reader.txn.open_table(REPLY_CHUNKS)?;
        for entry in table.range((group, 0, 0)..=(group, u64::MAX, u64::MAX))? {
            let (key, text) = entry?;
            let (_, seq, rev) = key.value();
            if rev > head.rev() {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "chunk of reply {seq} has rev {rev} beyond the head {}",
                        head.rev()
                    ),
                );
            }
            match stored.get_mut(&seq) {
                Some(event) if event.streaming => {
                    event.text.write(text.value().1.as_bytes());
                    event.rev = event.rev.max(rev);
                }
                found => {
                    let what = if found.is_some() {
                        "a finished event"
                    } else {
                        "a missing event"
                    };
                    let running = turn.map(|t| ids::to_string(t.turn_id));
                    self.problem(
                        Some(group),
                        Kind::StreamingWithoutTurn,
                        format!(
                            "streamed text at rev {rev} belongs to {what} {seq} \
                             (running turn: {running:?})"
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn changes(
        &mut self,
        reader: &Reader,
        group: u128,
        group_id: &str,
        head: Head,
        stored: &BTreeMap<u64, Stored>,
        replica: bool,
    ) -> Result<HashMap<u64, Logged>> {
        let table = reader.txn.open_table(CHANGES)?;
        let events = reader.txn.open_table(EVENTS)?;
        let chunks = reader.txn.open_table(REPLY_CHUNKS)?;
        let mut text = stored::ChangeReader::new(group, &events, &chunks);
        let mut logged: HashMap<u64, Logged> = HashMap::new();
        let mut revs = RevAccount::default();
        let mut next_appended = 1;
        for entry in table.range((group, 0)..=(group, u64::MAX))? {
            let (key, value) = entry?;
            let rev = key.value().1;
            self.report.changes += 1;
            if let Err(problem) = revs.reach(rev) {
                self.problem(Some(group), Kind::RevIndex, problem);
            }
            let Some(record) = self.decode::<stored::ChangeRecord>(
                Some(group),
                || format!("change {rev}"),
                value.value(),
            ) else {
                continue;
            };
            // A change about an event that is gone cannot be rebuilt: name it as what it is.
            if let Some(seq) = record.seq().filter(|seq| !stored.contains_key(seq)) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("change {rev} names event {seq}, which does not exist"),
                );
                continue;
            }
            match record {
                stored::ChangeRecord::Reset { last_seq } => {
                    // A replica's reset wrote every event up to `last_seq`: the log starts over.
                    logged.clear();
                    for seq in 1..=last_seq {
                        logged.insert(
                            seq,
                            Logged {
                                appended: 1,
                                latest_rev: rev,
                                reset: true,
                                ..Logged::default()
                            },
                        );
                    }
                    next_appended = last_seq.saturating_add(1);
                    continue;
                }
                stored::ChangeRecord::DeltasCollapsed {
                    seq,
                    through_rev,
                    count,
                    ..
                } => {
                    if let Err(problem) = revs.collapsed(rev, through_rev, count) {
                        self.problem(Some(group), Kind::RevIndex, problem);
                    }
                    if stored.get(&seq).is_some_and(|event| event.streaming) {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!("change {rev} collapses the deltas of reply {seq}, which is still streaming"),
                        );
                    }
                }
                _ => {}
            }
            let Some(update) = self.decoded(
                Some(group),
                || format!("change {rev}"),
                text.rebuild(rev, record),
            ) else {
                continue;
            };
            let created = matches!(update, GroupUpdate::GroupCreated { .. });
            if created != (rev == 1) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!(
                        "rev {rev} is {}",
                        if created {
                            "a second creation"
                        } else {
                            "not the group's creation"
                        }
                    ),
                );
            }
            let (seq, event) = match &update {
                GroupUpdate::EventAppended { event }
                | GroupUpdate::ReplyFinished { event }
                | GroupUpdate::MessageSent { event, .. } => (event.seq, Some(event)),
                GroupUpdate::ReplyDelta { seq, .. } => (*seq, None),
                GroupUpdate::GroupDeleted => {
                    self.problem(
                        Some(group),
                        Kind::RevIndex,
                        format!("rev {rev} records the deletion of a group that exists"),
                    );
                    continue;
                }
                _ => continue,
            };
            if !stored.contains_key(&seq) {
                self.problem(
                    Some(group),
                    Kind::RevIndex,
                    format!("change {rev} names event {seq}, which does not exist"),
                );
            }
            if let Some(event) = event {
                if event.rev != rev || event.group_id != group_id {
                    self.problem(
                        Some(group),
                        Kind::RevIndex,
                        format!(
                            "change {rev} carries event {seq} of group {} at rev {}",
                            event.group_id, event.rev
                        ),
                    );
                }
            }
            let log = logged.entry(seq).or_default();
            log.latest_rev = rev;
            match update {
                GroupUpdate::EventAppended { mut event }
                | GroupUpdate::MessageSent { mut event, .. } => {
                    if seq != next_appended {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!(
                                "change {rev} appends seq {seq} where seq {next_appended} was next"
                            ),
                        );
                    }
                    next_appended = seq.saturating_add(1);
                    let log = logged.entry(seq).or_default();
                    log.appended += 1;
                    log.streamed.write(event.text.as_bytes());
                    event.text.clear();
                    log.shape = Some(shape(&event)?);
                }
                GroupUpdate::ReplyDelta { text, .. } => {
                    if log.appended == 0 {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!("change {rev} streams into reply {seq} before it was appended"),
                        );
                    }
                    log.streamed.write(text.as_bytes());
                }
                GroupUpdate::ReplyFinished { mut event } => {
                    let text = event.text.as_bytes();
                    // A replica may have applied only the start of a reply's deltas: read from
                    // inside its home's collapsed deltas, the home's log goes on with the finish,
                    // which carries the whole text. What it streamed is then a prefix of it.
                    let covered = if replica {
                        text.get(..log.streamed.len())
                    } else {
                        Some(text)
                    };
                    if !log.reset && covered.map(Fnv::of) != Some(log.streamed) {
                        self.problem(
                            Some(group),
                            Kind::RevIndex,
                            format!("reply {seq} finished with text other than what it streamed"),
                        );
                    }
                    log.finished = Some(Fnv::of(text));
                    event.text.clear();
                    log.shape = Some(shape(&event)?);
                }
                _ => {}
            }
        }
        if let Err(problem) = revs.end(head.rev()) {
            self.problem(Some(group), Kind::RevIndex, problem);
        }
        Ok(logged)
    }

    pub(super) fn turn_lock(
        &mut self,
        group: u128,
        turn: &TurnRecord,
        record: &GroupConversation,
        sessions: &HashMap<u128, Session>,
        events: &BTreeMap<u64, Stored>,
    ) {
        let turn_id = ids::to_string(turn.turn_id);
        match events.get(&turn.user_seq) {
            Some(event)
                if event.kind == EventKind::User
                    && event.turn_id.as_deref() == Some(turn_id.as_str()) => {}
            _ => self.problem(
                Some(group),
                Kind::TurnLock,
                format!(
                    "turn {turn_id} names seq {} as its user message, which is not",
                    turn.user_seq
                ),
            ),
        }
        let mut seen = HashSet::new();
        for familiar in &turn.pending {
            if !seen.insert(familiar) {
                self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?} twice"),
                );
            }
            let session = record
                .session_of(familiar)
                .and_then(|id| ids::parse("session_id", id).ok())
                .and_then(|id| sessions.get(&id));
            match session {
                None => self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?}, which is not a member"),
                ),
                Some(session) if session.status != SessionStatus::Running => self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!(
                        "turn {turn_id} waits for {familiar:?}, whose session is {:?}",
                        session.status
                    ),
                ),
                Some(_) => {}
            }
            let finished = events
                .range(turn.user_seq.saturating_add(1)..)
                .any(|(_, e)| {
                    !e.streaming
                        && e.familiar_id.as_ref() == Some(familiar)
                        && e.turn_id.as_deref() == Some(turn_id.as_str())
                });
            if finished {
                self.problem(
                    Some(group),
                    Kind::TurnLock,
                    format!("turn {turn_id} waits for {familiar:?}, whose reply has finished"),
                );
            }
        }
    }
}

/// Accounts for every rev of a group's log: each is held by a record, or is one of the revs a
/// `DeltasCollapsed` record stands for (the deltas after its first, which the log no longer
/// holds, all at or before its `through_rev`).
#[derive(Default)]
struct RevAccount {
    /// The rev the log holds next if it has no hole.
    next: u64,
    /// Revs collapsed records stand for that the log has not been seen to lack yet.
    owed: u64,
    /// The latest rev a collapsed record seen so far covers.
    covered_through: u64,
}

impl RevAccount {
    /// The log holds a record at `rev`: the revs before it that it lacks must be collapsed ones.
    fn reach(&mut self, rev: u64) -> std::result::Result<(), String> {
        let expected = self.next.max(1);
        self.next = rev.saturating_add(1);
        let lacking = rev.saturating_sub(expected);
        if lacking == 0 {
            return Ok(());
        }
        if lacking <= self.owed && rev - 1 <= self.covered_through {
            self.owed -= lacking;
            return Ok(());
        }
        Err(format!(
            "the change log jumps from rev {} to rev {rev}, and no collapsed deltas account for \
             the revs between",
            expected - 1
        ))
    }

    /// A `DeltasCollapsed` record at `rev` stands for `count` deltas through `through_rev`.
    fn collapsed(
        &mut self,
        rev: u64,
        through_rev: u64,
        count: u64,
    ) -> std::result::Result<(), String> {
        if count < 2 || through_rev <= rev || through_rev - rev + 1 < count {
            return Err(format!(
                "change {rev} collapses {count} deltas through rev {through_rev}, which that \
                 range cannot hold"
            ));
        }
        self.owed += count - 1;
        self.covered_through = self.covered_through.max(through_rev);
        Ok(())
    }

    /// The log ends; the head's latest rev is `head_rev`, whose change (a reply's finish follows
    /// its collapsed deltas) the log holds.
    fn end(&self, head_rev: u64) -> std::result::Result<(), String> {
        let held_through = self.next.max(1) - 1;
        if held_through != head_rev {
            return Err(format!(
                "the head's latest rev is {head_rev} but the change log ends at rev {held_through}"
            ));
        }
        if self.owed > 0 {
            return Err(format!(
                "collapsed deltas stand for {} revs that the change log still holds",
                self.owed
            ));
        }
        Ok(())
    }
}

/// A fingerprint of an event's encoding (its text cleared by the caller).
pub(super) fn shape(event: &GroupEvent) -> Result<u64> {
    Ok(Fnv::of(&codec::encode(event)?).0)
}

/// FNV-1a over a byte stream, so text split across chunks and deltas compares with text stored
/// whole without keeping either in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fnv(u64, u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325, 0)
    }
}

impl Fnv {
    pub(super) fn of(bytes: &[u8]) -> Self {
        let mut fnv = Self::default();
        fnv.write(bytes);
        fnv
    }

    /// How many bytes it has been fed.
    pub(super) fn len(&self) -> usize {
        usize::try_from(self.1).unwrap_or(usize::MAX)
    }

    /// Feeds more bytes; the second field counts them.
    pub(super) fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.1 += bytes.len() as u64;
    }
}
