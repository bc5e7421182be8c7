//! Where committed changes go after the writer's commit, and the subscriptions that deliver them.
//!
//! Publishing happens strictly after the commit that made the changes durable (invariant 2), in
//! rev order per group. Registration and publishing share one lock, which makes the hand-off from
//! the store backlog to live delivery exact: every change is either committed before a
//! subscription registers (so its backlog read finds it) or published after (so its queue gets
//! it); duplicates of the overlap are dropped by rev.
//!
//! Each subscription has a bounded queue and its own delivery thread, which calls the listener
//! holding no lock (invariant 9). A subscription whose queue overflows drops it and re-reads the
//! store from the last rev it delivered, so a slow listener costs bounded memory and loses nothing.
//!
//! Logs (debug): a `subscription` span around each delivery thread, with `subscription queue
//! overflowed` (on the writer thread), `subscription backlog page read` for every page read from
//! the store, and `subscription ended`. A read that fails with anything but `Closed` is a warn.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::host::{self, HostRef, HostThread, Origin};
use crate::ids;
use crate::model::{GroupChange, GroupUpdate};
use crate::store::writer::Publish;
use crate::store::ReadGate;

/// Changes a subscription may hold undelivered before it falls back to reading the store.
pub const SUBSCRIPTION_QUEUE_LIMIT: usize = 4096;
/// Changes read from the store per backlog page.
const BACKLOG_PAGE: u32 = 1024;

/// Receives a group's committed changes, in rev order, in batches.
#[uniffi::export(with_foreign)]
pub trait GroupListener: Send + Sync {
    /// Called on the subscription's own thread with the next changes after the last batch. An
    /// error is the listener's own business: delivery goes on with the next batch.
    fn on_updates(&self, updates: Vec<GroupChange>) -> Result<()>;
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<GroupChange>,
    /// The queue overflowed and was dropped; re-read the store.
    overflowed: bool,
    /// The group's deletion notice, kept even through an overflow: once the group is gone the
    /// store cannot supply it.
    deleted: Option<GroupChange>,
    cancelled: bool,
}

struct Feed {
    id: u64,
    group_id: String,
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Feed {
    fn push(&self, change: &GroupChange) {
        let mut pending = self.pending.lock();
        if change.update == GroupUpdate::GroupDeleted {
            pending.deleted = Some(change.clone());
        }
        if pending.cancelled || pending.overflowed {
            return;
        }
        if pending.queue.len() >= SUBSCRIPTION_QUEUE_LIMIT {
            pending.queue = VecDeque::new();
            pending.overflowed = true;
            debug!(
                subscription = self.id,
                group_id = %self.group_id,
                limit = SUBSCRIPTION_QUEUE_LIMIT,
                "subscription queue overflowed; it catches up from the store"
            );
        } else {
            pending.queue.push_back(change.clone());
        }
    }

    fn cancel(&self) {
        self.pending.lock().cancelled = true;
        self.wake.notify_all();
    }
}

#[derive(Default)]
struct HubState {
    latest: HashMap<String, u64>,
    feeds: HashMap<String, Vec<Arc<Feed>>>,
    /// The store is closing: no new subscription, and long-polls return.
    closed: bool,
}

/// Latest published rev per group, long-poll wake-ups, and the live subscriptions.
pub struct Hub {
    state: Mutex<HubState>,
    published: Condvar,
    next_id: AtomicU64,
    /// Delivery threads still running, waited for (at most `stop_grace`) when stopped.
    threads: Mutex<HashMap<u64, HostThread>>,
    /// How long stopping a subscription waits for a listener call in progress.
    stop_grace: Duration,
}

impl Publish for Hub {
    fn publish(&self, changes: Vec<GroupChange>) {
        Hub::publish(self, changes);
    }
}

impl Hub {
    pub fn new(stop_grace: Duration) -> Self {
        Self {
            state: Mutex::default(),
            published: Condvar::new(),
            next_id: AtomicU64::new(0),
            threads: Mutex::default(),
            stop_grace,
        }
    }

    /// Called by the writer after each commit with that commit's changes in rev order.
    pub fn publish(&self, changes: Vec<GroupChange>) {
        let mut woken: Vec<Arc<Feed>> = Vec::new();
        {
            let mut state = self.state.lock();
            for change in &changes {
                match state.latest.get_mut(&change.group_id) {
                    Some(latest) => *latest = change.rev,
                    None => {
                        state.latest.insert(change.group_id.clone(), change.rev);
                    }
                }
                if let Some(feeds) = state.feeds.get(&change.group_id) {
                    for feed in feeds {
                        feed.push(change);
                        if !woken.iter().any(|w| w.id == feed.id) {
                            woken.push(feed.clone());
                        }
                    }
                }
                if change.update == GroupUpdate::GroupDeleted {
                    state.feeds.remove(&change.group_id);
                }
            }
        }
        self.published.notify_all();
        for feed in woken {
            feed.wake.notify_all();
        }
    }

    /// Long-poll: the changes after `after_rev` (up to `limit`) as soon as there are any, or an
    /// empty page once `timeout` passes. Woken by a publish, never by polling.
    pub fn wait_for_changes(
        &self,
        reads: &Arc<ReadGate>,
        group: u128,
        after_rev: u64,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<GroupChange>> {
        let changes = reads.read(|reader| reader.changes(group, after_rev, limit))?;
        if !changes.is_empty() {
            return Ok(changes);
        }
        // Publishing follows the commit, so a change committed after the read above is either
        // already recorded here (no wait) or wakes this wait.
        if self.wait_beyond(&ids::to_string(group), after_rev, timeout)? {
            reads.read(|reader| reader.changes(group, after_rev, limit))
        } else {
            Ok(Vec::new())
        }
    }

    /// Blocks until the group has a published rev beyond `after_rev`, or the deadline passes.
    /// Returns whether such a rev was published; `Closed` when the store closes meanwhile.
    fn wait_beyond(&self, group_id: &str, after_rev: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Err(Error::Closed);
            }
            let beyond = |state: &HubState| {
                state
                    .latest
                    .get(group_id)
                    .is_some_and(|rev| *rev > after_rev)
            };
            if beyond(&state) {
                return Ok(true);
            }
            if self.published.wait_until(&mut state, deadline).timed_out() {
                return Ok(beyond(&state));
            }
        }
    }

    /// Registers a subscription and starts its delivery thread.
    pub fn subscribe(
        self: &Arc<Self>,
        reads: Arc<ReadGate>,
        group: u128,
        after_rev: u64,
        listener: Arc<dyn GroupListener>,
        origin: Origin,
    ) -> Result<Arc<Subscription>> {
        let group_id = ids::to_string(group);
        let feed = Arc::new(Feed {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            group_id: group_id.clone(),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        // From here on every publish for the group reaches the feed; the backlog read that the
        // thread starts with covers everything committed before.
        {
            let mut state = self.state.lock();
            if state.closed {
                return Err(Error::Closed);
            }
            state.feeds.entry(group_id).or_default().push(feed.clone());
        }
        let delivery = Delivery {
            hub: Arc::downgrade(self),
            reads,
            group,
            delivered: after_rev,
            feed: feed.clone(),
            listener: HostRef::new(listener, origin),
        };
        let thread = host::spawn("coven-subscription", move || delivery.run());
        let thread = match thread {
            Ok(thread) => thread,
            Err(err) => {
                self.remove(&feed);
                return Err(Error::storage(format!(
                    "cannot start a subscription thread: {err}"
                )));
            }
        };
        self.threads.lock().insert(feed.id, thread);
        Ok(Arc::new(Subscription {
            hub: Arc::downgrade(self),
            feed,
        }))
    }

    fn remove(&self, feed: &Feed) {
        let mut state = self.state.lock();
        if let Some(feeds) = state.feeds.get_mut(&feed.group_id) {
            feeds.retain(|f| f.id != feed.id);
            if feeds.is_empty() {
                state.feeds.remove(&feed.group_id);
            }
        }
    }

    /// Stops a subscription and waits for its thread to end, unless called from that very
    /// thread, and at most `stop_grace` when a listener call is in progress.
    fn stop(&self, feed: &Feed) {
        feed.cancel();
        self.remove(feed);
        let thread = self.threads.lock().remove(&feed.id);
        if let Some(thread) = thread {
            if !thread.is_current() {
                thread.wait(self.stop_grace);
            }
        }
    }

    /// Ends every subscription and wakes every long-poll (the store is closing).
    pub fn close(&self) {
        let feeds: Vec<Arc<Feed>> = {
            let mut state = self.state.lock();
            state.closed = true;
            state.feeds.drain().flat_map(|(_, feeds)| feeds).collect()
        };
        self.published.notify_all();
        for feed in &feeds {
            feed.cancel();
        }
        // One grace for all of them: listener calls in progress end in parallel.
        let deadline = Instant::now() + self.stop_grace;
        let threads: Vec<HostThread> = self.threads.lock().drain().map(|(_, t)| t).collect();
        for thread in threads {
            if !thread.is_current() {
                thread.wait(deadline.saturating_duration_since(Instant::now()));
            }
        }
    }
}

/// A live subscription. `cancel()` or dropping the handle stops delivery and ends its thread.
#[derive(uniffi::Object)]
pub struct Subscription {
    hub: std::sync::Weak<Hub>,
    feed: Arc<Feed>,
}

#[uniffi::export]
impl Subscription {
    /// Stops delivery: no listener call starts after this returns. Returns once the delivery
    /// thread has ended, at once when called from the listener itself, and after at most
    /// `Config::stop_grace_ms` when a listener call in progress does not return (the thread is
    /// then left to end by itself). Cancelling twice is harmless.
    pub fn cancel(&self) {
        match self.hub.upgrade() {
            Some(hub) => hub.stop(&self.feed),
            None => self.feed.cancel(),
        }
    }

    /// The group this subscription follows.
    pub fn group_id(&self) -> String {
        self.feed.group_id.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The delivery thread's state: where it is in the group's rev order.
struct Delivery {
    hub: std::sync::Weak<Hub>,
    /// Reads go through the store's gate, so a delivery thread never keeps a closed store's
    /// file open.
    reads: Arc<ReadGate>,
    group: u128,
    delivered: u64,
    feed: Arc<Feed>,
    listener: HostRef<dyn GroupListener>,
}

enum Step {
    Deliver(Vec<GroupChange>),
    /// The store has nothing newer than what was delivered: continue from the live queue.
    GoLive,
    /// The live queue cannot continue exactly: re-read the store.
    CatchUp,
    Stop,
}

impl Delivery {
    fn run(mut self) {
        let span = tracing::debug_span!(
            "subscription",
            subscription = self.feed.id,
            group_id = %self.feed.group_id,
        );
        let _in_subscription = span.enter();
        debug!(after_rev = self.delivered, "subscription started");
        self.deliver_all();
        debug!(delivered_rev = self.delivered, "subscription ended");
        // A subscription that ended by itself (its group was deleted) forgets its thread.
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(&self.feed);
            hub.threads.lock().remove(&self.feed.id);
        }
    }

    fn deliver_all(&mut self) {
        let mut catching_up = true;
        loop {
            let step = if catching_up {
                self.backlog_page()
            } else {
                self.next_live()
            };
            match step {
                Step::Deliver(changes) => {
                    let ends = changes
                        .iter()
                        .any(|c| c.update == GroupUpdate::GroupDeleted);
                    if !self.deliver(changes) || ends {
                        return;
                    }
                }
                Step::GoLive => catching_up = false,
                Step::CatchUp => catching_up = true,
                Step::Stop => return,
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.feed.pending.lock().cancelled
    }

    /// Calls the listener without holding any lock. False once cancelled.
    fn deliver(&mut self, changes: Vec<GroupChange>) -> bool {
        if self.cancelled() {
            return false;
        }
        let last = changes.last().map(|c| c.rev).unwrap_or(self.delivered);
        let listener = &self.listener;
        // A panicking or raising listener does not end delivery: the next batch follows. A host
        // that is exiting ends it.
        if let Err(host::Unreturned::HostExiting) =
            host::call(listener.origin, || listener.on_updates(changes))
        {
            return false;
        }
        self.delivered = last;
        !self.cancelled()
    }

    fn backlog_page(&mut self) -> Step {
        if self.cancelled() {
            return Step::Stop;
        }
        let page = self
            .reads
            .read(|reader| reader.changes(self.group, self.delivered, BACKLOG_PAGE));
        match page {
            Ok(page) if page.is_empty() => Step::GoLive,
            Ok(page) => {
                debug!(
                    after_rev = self.delivered,
                    changes = page.len(),
                    "subscription backlog page read from the store"
                );
                Step::Deliver(page)
            }
            // The group is gone (and its log with it): its deletion notice ends the
            // subscription; a subscriber that lagged behind jumps straight to it.
            Err(Error::NotFound { .. }) => {
                let notice = self.feed.pending.lock().deleted.clone();
                Step::Deliver(vec![notice.unwrap_or_else(|| GroupChange {
                    group_id: self.feed.group_id.clone(),
                    rev: self.delivered + 1,
                    update: GroupUpdate::GroupDeleted,
                })])
            }
            // The store is closing or failing: stop rather than spin.
            Err(Error::Closed) => Step::Stop,
            Err(err) => {
                warn!(error = %err, "subscription stopped: the store could not be read");
                Step::Stop
            }
        }
    }

    fn next_live(&mut self) -> Step {
        let mut pending = self.feed.pending.lock();
        loop {
            if pending.cancelled {
                return Step::Stop;
            }
            if pending.overflowed {
                pending.overflowed = false;
                return Step::CatchUp;
            }
            // Changes at or below the delivered rev came through the backlog already.
            while pending
                .queue
                .front()
                .is_some_and(|c| c.rev <= self.delivered)
            {
                pending.queue.pop_front();
            }
            if !pending.queue.is_empty() {
                break;
            }
            self.feed.wake.wait(&mut pending);
        }
        let batch: Vec<GroupChange> = pending.queue.drain(..).collect();
        drop(pending);
        let contiguous = batch.first().is_some_and(|first| {
            first.rev == self.delivered + 1 || first.update == GroupUpdate::GroupDeleted
        });
        if contiguous {
            Step::Deliver(batch)
        } else {
            // A hole can only mean changes this feed never saw: fetch them from the store.
            debug!(
                delivered_rev = self.delivered,
                "subscription missed changes; it catches up from the store"
            );
            Step::CatchUp
        }
    }
}
