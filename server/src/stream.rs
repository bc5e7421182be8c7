//! Server-sent event streams: the framing, the group's change feed and the send stream.
//!
//! Framing (the peers' convention): each frame is `id: <rev>` then `data: <JSON>` and a blank
//! line, with no `event:` line; the JSON's `kind` names the frame. A `: hb` comment goes out
//! whenever the stream has been quiet for the heartbeat interval (15 s by default).
//!
//! A stream reads a library [`Subscription`]: every change after its start rev, exactly once, in
//! rev order, backlog then live. The listener hands batches to a small bounded channel; while a
//! client is slow the subscription's thread waits on that channel, the library's queue behind it
//! overflows and it re-reads the store from where it was, so a lagging client costs bounded
//! memory and loses nothing.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use coven_group::{self as cg, Coven, GroupChange, GroupListener, GroupUpdate, Subscription};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::api::{self, Frame};
use crate::error::ApiError;

/// Batches of changes a stream holds between the library's subscription and the socket.
const BATCHES_IN_FLIGHT: usize = 4;
/// Encoded frames buffered ahead of the socket.
const FRAMES_IN_FLIGHT: usize = 64;
/// Changes read per page when a send stream drains the store after its turn ended.
const DRAIN_PAGE: u32 = 1024;
/// How often a send stream's watcher checks whether its client left while the turn runs.
const TURN_WAIT_SLICE: Duration = Duration::from_secs(1);

/// One frame as SSE text: `id: <rev>` (when given), then `data: <JSON>`.
pub fn encode(id: Option<u64>, frame: &Frame) -> Bytes {
    let json = serde_json::to_string(frame).unwrap_or_else(|_| "{}".to_owned());
    let text = match id {
        Some(id) => format!("id: {id}\ndata: {json}\n\n"),
        None => format!("data: {json}\n\n"),
    };
    Bytes::from(text)
}

const HEARTBEAT: &[u8] = b": hb\n\n";

/// What every stream shares: the heartbeat interval, the shutdown signal and its slot among
/// the bounded number of streams.
pub struct StreamContext {
    pub heartbeat: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub permit: OwnedSemaphorePermit,
}

impl StreamContext {
    /// What a stream's task holds while it runs: the heartbeat timer (first tick one heartbeat
    /// from now), the shutdown signal, and the stream's slot, released when the task ends.
    fn begin(
        self,
    ) -> (
        tokio::time::Interval,
        watch::Receiver<bool>,
        OwnedSemaphorePermit,
    ) {
        let quiet =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        (quiet, self.shutdown, self.permit)
    }
}

/// A `text/event-stream` response whose body is what the task writes into the sender.
fn response(frames: mpsc::Receiver<Bytes>) -> Response {
    let body = futures_util::stream::unfold(frames, |mut frames| async move {
        frames
            .recv()
            .await
            .map(|bytes| (Ok::<Bytes, Infallible>(bytes), frames))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Hands each batch of a subscription to its stream, waiting while the stream's channel is
/// full (the library then queues and, past its bound, re-reads the store).
struct ChannelListener {
    batches: mpsc::Sender<Vec<GroupChange>>,
}

impl GroupListener for ChannelListener {
    fn on_updates(&self, updates: Vec<GroupChange>) -> cg::Result<()> {
        // Err means the stream ended; the subscription is being cancelled.
        let _ = self.batches.blocking_send(updates);
        Ok(())
    }
}

/// A subscription and the receiving end of its channel. Dropping it closes the channel first
/// (so a listener call waiting on it returns) and then cancels the subscription on a blocking
/// thread, since cancelling waits for the delivery thread.
struct Feed {
    batches: Option<mpsc::Receiver<Vec<GroupChange>>>,
    subscription: Option<Arc<Subscription>>,
}

impl Feed {
    async fn open(coven: Arc<Coven>, group_id: String, after_rev: u64) -> Result<Feed, ApiError> {
        let (sender, batches) = mpsc::channel(BATCHES_IN_FLIGHT);
        let subscription = tokio::task::spawn_blocking(move || {
            coven.subscribe(
                &group_id,
                after_rev,
                Arc::new(ChannelListener { batches: sender }),
            )
        })
        .await
        .map_err(|_| internal("the subscription could not be started"))??;
        Ok(Feed {
            batches: Some(batches),
            subscription: Some(subscription),
        })
    }

    async fn next(&mut self) -> Option<Vec<GroupChange>> {
        match &mut self.batches {
            Some(batches) => batches.recv().await,
            // Ended: never ready again, so a `select!` waits on its other branches.
            None => std::future::pending().await,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        drop(self.batches.take());
        if let Some(subscription) = self.subscription.take() {
            // Outside a runtime (a test dropping it) the drop cancels in place.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn_blocking(move || subscription.cancel());
            }
        }
    }
}

fn internal(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// `GET /api/groups/{id}/events`: every change after `after_rev`, backlog then live, each frame
/// with `id` = its rev. Ends after `groupDeleted`, when the server shuts down, or when the
/// client leaves.
pub async fn events(
    coven: Arc<Coven>,
    group_id: String,
    after_rev: u64,
    context: StreamContext,
) -> Result<Response, ApiError> {
    let feed = Feed::open(coven, group_id, after_rev).await?;
    let (frames, body) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::spawn(follow_group(feed, frames, context));
    Ok(response(body))
}

async fn follow_group(mut feed: Feed, frames: mpsc::Sender<Bytes>, context: StreamContext) {
    let (mut quiet, mut shutdown, _permit) = context.begin();
    loop {
        tokio::select! {
            _ = until_stopping(&mut shutdown) => return,
            _ = frames.closed() => return,
            _ = quiet.tick() => {
                if frames.send(Bytes::from_static(HEARTBEAT)).await.is_err() {
                    return;
                }
            }
            batch = feed.next() => {
                let Some(batch) = batch else { return };
                for change in batch {
                    let rev = change.rev;
                    let deleted = change.update == GroupUpdate::GroupDeleted;
                    if frames.send(encode(Some(rev), &api::change_frame(change))).await.is_err() {
                        return;
                    }
                    if deleted {
                        return;
                    }
                }
                quiet.reset();
            }
        }
    }
}

/// Which of a group's changes belong to one turn, and where the stream is in rev order.
struct TurnFilter {
    turn_id: String,
    /// The seqs of this turn's replies, claimed as they start.
    replies: HashSet<u64>,
    /// The last rev handled (forwarded or skipped).
    rev: u64,
}

impl TurnFilter {
    /// The frame for a change of this turn; `None` for changes of anything else.
    fn frame(&mut self, change: GroupChange) -> Option<(u64, Frame)> {
        if change.rev <= self.rev {
            return None;
        }
        self.rev = change.rev;
        let rev = Some(change.rev);
        let ours = |event: &cg::GroupEvent| event.turn_id.as_deref() == Some(&self.turn_id);
        let frame = match change.update {
            GroupUpdate::EventAppended { event } if ours(&event) => match event.kind {
                cg::EventKind::User => api::event_frame("user", rev, event),
                cg::EventKind::Familiar if event.streaming => {
                    self.replies.insert(event.seq);
                    api::event_frame("replyStart", rev, event)
                }
                // A member that produced nothing gets its finished reply (with its error) at once.
                _ => api::event_frame("replyFinished", rev, event),
            },
            GroupUpdate::ReplyDelta {
                seq,
                familiar_id,
                text,
            } if self.replies.contains(&seq) => Frame {
                kind: "replyDelta".into(),
                rev,
                seq: Some(seq),
                familiar_id: Some(familiar_id),
                turn_id: Some(self.turn_id.clone()),
                text: Some(text),
                ..Frame::default()
            },
            GroupUpdate::ReplyFinished { event } if ours(&event) => {
                api::event_frame("replyFinished", rev, event)
            }
            _ => return None,
        };
        Some((change.rev, frame))
    }
}

/// `POST /api/groups/{id}/send` once the turn started: its user event, each reply's start,
/// deltas and finish (ids = revs), then `done`. The turn belongs to the store, not to the
/// stream: a client that leaves stops only its stream.
pub async fn turn(
    coven: Arc<Coven>,
    group_id: String,
    handle: cg::TurnHandle,
    context: StreamContext,
) -> Result<Response, ApiError> {
    // The user event is the turn's first change: follow from just before it.
    let start = handle.user_event.rev.saturating_sub(1);
    let feed = Feed::open(coven.clone(), group_id.clone(), start).await?;
    let (ended_sender, ended) = oneshot::channel();
    let watcher_coven = coven.clone();
    let turn_id = handle.turn_id.clone();
    tokio::task::spawn_blocking(move || loop {
        match watcher_coven.wait_turn(&turn_id, TURN_WAIT_SLICE) {
            Ok(false) if !ended_sender.is_closed() => continue,
            Ok(false) => return,
            outcome => {
                let _ = ended_sender.send(outcome.map(|_| ()));
                return;
            }
        }
    });
    let filter = TurnFilter {
        turn_id: handle.turn_id,
        replies: HashSet::new(),
        rev: start,
    };
    let (frames, body) = mpsc::channel(FRAMES_IN_FLIGHT);
    tokio::spawn(follow_turn(
        coven, group_id, feed, ended, filter, frames, context,
    ));
    Ok(response(body))
}

async fn follow_turn(
    coven: Arc<Coven>,
    group_id: String,
    mut feed: Feed,
    mut ended: oneshot::Receiver<cg::Result<()>>,
    mut filter: TurnFilter,
    frames: mpsc::Sender<Bytes>,
    context: StreamContext,
) {
    let (mut quiet, mut shutdown, _permit) = context.begin();
    loop {
        tokio::select! {
            _ = until_stopping(&mut shutdown) => {
                let error = ApiError::from(cg::Error::Closed);
                let _ = frames.send(encode(None, &error_frame(&error))).await;
                return;
            }
            _ = frames.closed() => return,
            _ = quiet.tick() => {
                if frames.send(Bytes::from_static(HEARTBEAT)).await.is_err() {
                    return;
                }
            }
            outcome = &mut ended => {
                let outcome = match outcome {
                    Ok(outcome) => outcome.map_err(ApiError::from),
                    Err(_) => Err(internal("the turn could not be followed")),
                };
                // Every reply of the turn is committed: what the subscription has not handed
                // over yet is read from the store, from the last rev handled.
                drop(feed);
                let finished = match outcome {
                    Ok(()) => drain(&coven, &group_id, &mut filter, &frames).await,
                    Err(error) => Err(error),
                };
                let last = match finished {
                    Ok(true) => Frame {
                        kind: "done".into(),
                        rev: Some(filter.rev),
                        turn_id: Some(filter.turn_id.clone()),
                        ..Frame::default()
                    },
                    Ok(false) => return,
                    Err(error) => error_frame(&error),
                };
                let _ = frames.send(encode(None, &last)).await;
                return;
            }
            batch = feed.next() => {
                let Some(batch) = batch else {
                    // The subscription ended (the group was deleted or the store closed): the
                    // turn's end is still reported by the watcher.
                    feed.batches = None;
                    continue;
                };
                for change in batch {
                    if let Some((rev, frame)) = filter.frame(change) {
                        if frames.send(encode(Some(rev), &frame)).await.is_err() {
                            return;
                        }
                    }
                }
                quiet.reset();
            }
        }
    }
}

/// Forwards the turn's changes after the filter's rev from the store, page by page, until a
/// page is empty. False when the client left.
async fn drain(
    coven: &Arc<Coven>,
    group_id: &str,
    filter: &mut TurnFilter,
    frames: &mpsc::Sender<Bytes>,
) -> Result<bool, ApiError> {
    loop {
        let reader = coven.clone();
        let group = group_id.to_owned();
        let after = filter.rev;
        let page =
            tokio::task::spawn_blocking(move || reader.changes_since(&group, after, DRAIN_PAGE))
                .await
                .map_err(|_| internal("the store could not be read"))?;
        let page = match page {
            Ok(page) => page,
            // The group was deleted after the turn: nothing more of it can be read.
            Err(cg::Error::NotFound { .. }) => return Ok(true),
            Err(error) => return Err(error.into()),
        };
        if page.is_empty() {
            return Ok(true);
        }
        for change in page {
            if let Some((rev, frame)) = filter.frame(change) {
                if frames.send(encode(Some(rev), &frame)).await.is_err() {
                    return Ok(false);
                }
            }
        }
    }
}

/// Resolves once the server starts shutting down (or is gone).
async fn until_stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, so the stream's future stays `Send`.
    let _ = shutdown.wait_for(|stopping| *stopping).await.is_ok();
}

/// The `error` frame carrying an error response's code, message and details.
pub fn error_frame(error: &ApiError) -> Frame {
    Frame {
        kind: "error".into(),
        error: Some(error.detail()),
        ..Frame::default()
    }
}
