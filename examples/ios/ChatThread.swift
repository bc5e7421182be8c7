// How an iOS chat thread uses coven-group (the `CovenGroup` Swift module from
// `bindings/generate.sh`; see bindings/README.md for the XCFramework).
//
// Before: the thread kept `[familiarId: sessionId]` and looped one prompt over N sessions, so the
// "group" had no shared order and could not re-sync. After: the thread is bound to one group id;
// it sends through the library and renders the group's one timeline, bubbles keyed by seq and
// attributed to their familiar, from a listener, and re-syncs by rev. Opening a thread reads only
// its tail (the latest page of events), so the first screen costs the same for a thread of ten
// messages or ten thousand; older bubbles are read a page at a time as the user scrolls up.
//
// On a phone the group usually lives on the desktop (`coven-group serve`, its home): the phone's
// store holds a replica, `DesktopSync` keeps it in step over HTTP, and a message sent here goes
// into the phone's outbox and shows at once as a pending bubble (its echo) until the desktop's
// event replaces it, in one change. The same `ChatThread` renders a group homed on the phone.
//
// In SwiftUI:
//
//     List(thread.bubbles) { bubble in
//         BubbleView(bubble).onAppear {
//             if bubble.seq == thread.bubbles.first?.seq { Task { await thread.loadEarlier() } }
//         }
//     }
//     ForEach(thread.pending, id: \.txnId) { echo in PendingBubbleView(echo) }  // greyed, "sending…"

import CovenGroup
import Foundation

/// One bubble of the thread: a timeline event, keyed by its seq.
struct Bubble: Identifiable, Equatable {
    let seq: UInt64
    var id: UInt64 { seq }
    let familiarId: String?  // nil: the user or a system notice
    let author: String?
    var text: String
    var streaming: Bool
    var failure: String?

    init(_ event: GroupEvent) {
        seq = event.seq
        familiarId = event.familiarId
        author = event.author
        text = event.text
        streaming = event.streaming
        failure = event.error.map { "\($0.kind): \($0.message)" }
    }
}

@MainActor
final class ChatThread: ObservableObject {
    let groupId: String
    @Published private(set) var bubbles: [Bubble] = []
    /// Whether events older than the first bubble exist (scrolling up loads them).
    @Published private(set) var hasEarlier = false
    /// Messages sent from this phone that its group's home has not applied yet, in send order;
    /// a failed one carries the reason and whether retrying can help.
    @Published private(set) var pending: [PendingMessage] = []
    @Published private(set) var lastError: String?

    /// Events per page: the tail shown at open, and each page loaded when scrolling up.
    static let pageSize: UInt32 = 50

    private let coven: Coven
    /// Set for a replica of a group homed elsewhere (the desktop): sends go through the outbox.
    private let sync: DesktopSync?
    /// The rev every bubble reflects; everything after it is applied exactly once.
    private var rev: UInt64 = 0
    private var subscription: Subscription?
    private var loadingEarlier = false

    /// Binds the thread to a group: renders its latest page of events (not the whole history),
    /// then follows it live from the rev that page reflects.
    init(coven: Coven, groupId: String, sync: DesktopSync? = nil) throws {
        self.coven = coven
        self.groupId = groupId
        self.sync = sync
        let tail = try coven.getGroupTail(groupId: groupId, limit: Self.pageSize)
        bubbles = tail.events.map(Bubble.init)
        hasEarlier = tail.hasEarlier
        pending = tail.pending
        rev = tail.rev
        // Keep the handle: dropping a Subscription cancels it.
        subscription = try coven.subscribe(groupId: groupId, afterRev: rev, listener: MainActorListener(self))
    }

    /// Adopts the thread the app used to fake: its `familiarId → sessionId` map and the history
    /// each session already holds become one group (sessions reused, histories interleaved).
    static func adopt(
        coven: Coven, title: String, sessionIds: [String: String], histories: [String: [HistoryMessage]]
    ) throws -> ChatThread {
        let members = sessionIds.sorted { $0.key < $1.key }.map { familiarId, sessionId in
            AdoptedMember(familiarId: familiarId, sessionId: sessionId, history: histories[familiarId] ?? [])
        }
        let group = try coven.adoptGroup(title: title, members: members)
        return try ChatThread(coven: coven, groupId: group.id)
    }

    // No deinit needed: the listener holds this thread weakly (a strong reference would be a
    // cycle through the library: listener → thread → subscription → listener), so when the
    // thread goes away its Subscription is released, which cancels it.

    /// One prompt to every member. The call returns once the user's message has its seq; the
    /// replies arrive through the listener. Off the main actor: it waits for a durable commit.
    func send(_ text: String) {
        let coven = coven, groupId = groupId, sync = sync
        Task.detached {
            do {
                if let sync {
                    // A replica: the message is queued durably and echoes at once (through the
                    // listener: `messagePending`); sync carries it home.
                    _ = try coven.enqueue(mutation: .send(groupId: groupId, text: text, author: nil))
                    sync.syncSoon()
                } else {
                    _ = try coven.send(groupId: groupId, text: text, author: nil)
                }
            } catch CovenError.Conflict(let reason) {
                await self.report("still answering the previous message: \(reason)")
            } catch {
                await self.report("\(error)")
            }
        }
    }

    func stop() {
        let coven = coven, groupId = groupId, sync = sync
        Task.detached {
            if let sync {
                _ = try? coven.enqueue(mutation: .cancelTurn(groupId: groupId))
                sync.syncSoon()
            } else {
                _ = try? coven.cancelTurn(groupId: groupId)
            }
        }
    }

    /// A failed echo's retry button (a `Conflict`: the previous turn was still running).
    func retry(_ echo: PendingMessage) {
        let coven = coven, sync = sync
        Task.detached {
            _ = try? coven.retryOutbox(txnId: echo.txnId)
            sync?.syncSoon()
        }
    }

    /// A failed echo's delete button: the message is dropped, and the outbox goes on.
    func discard(_ echo: PendingMessage) {
        let coven = coven
        Task.detached { try? coven.discardOutbox(txnId: echo.txnId) }
    }

    /// Scrolling up reached the first bubble: loads the page of events before it. Events never
    /// change once earlier than every reply still streaming, so a page read now stays true; one
    /// call at a time.
    func loadEarlier() async {
        guard hasEarlier, !loadingEarlier, let first = bubbles.first?.seq else { return }
        loadingEarlier = true
        defer { loadingEarlier = false }
        let coven = coven, groupId = groupId, limit = Self.pageSize
        do {
            let page = try await Task.detached {
                try coven.eventsBefore(groupId: groupId, beforeSeq: first, limit: limit)
            }.value
            // Live changes only touch later seqs, so the page goes in front as it is.
            let earlier = page.filter { $0.seq < (bubbles.first?.seq ?? first) }
            bubbles.insert(contentsOf: earlier.map(Bubble.init), at: 0)
            hasEarlier = (page.first?.seq ?? 1) > 1
        } catch {
            report("\(error)")
        }
    }

    /// Pull-to-refresh: pulls exactly what this thread has not seen (after `rev`).
    func refresh() async {
        let coven = coven, groupId = groupId, after = rev
        do {
            let changes = try await Task.detached { try coven.changesSince(groupId: groupId, afterRev: after, limit: 10_000) }.value
            apply(changes)
        } catch {
            report("\(error)")
        }
    }

    /// Applies changes in rev order; a rev already applied is skipped, so the listener and a
    /// refresh can overlap. A gap (which the library never produces) falls back to a refresh.
    fileprivate func apply(_ changes: [GroupChange]) {
        for change in changes where change.rev > rev {
            // A replica's reset stands for the whole group as of its rev (the library sends one
            // when this store took the home's snapshot, or to a reader behind that point).
            if case .groupReset(_, let events, let echoes) = change.update {
                rev = change.rev
                bubbles = events.suffix(Int(Self.pageSize)).map(Bubble.init)
                hasEarlier = (bubbles.first?.seq ?? 1) > 1
                pending = echoes
                continue
            }
            guard change.rev == rev + 1 else {
                Task { await refresh() }
                return
            }
            rev = change.rev
            switch change.update {
            case .eventAppended(let event):
                upsert(Bubble(event))
            case .replyDelta(let seq, _, let text):
                if let index = index(of: seq) { bubbles[index].text += text }
            case .replyFinished(let event):
                upsert(Bubble(event))
            case .groupDeleted:
                subscription = nil
                bubbles = []
                pending = []
            case .messagePending(let echo):
                if let index = pending.firstIndex(where: { $0.txnId == echo.txnId }) {
                    pending[index] = echo  // its send state changed (failed, or retried)
                } else {
                    pending.append(echo)
                }
            case .messageSent(let txnId, let event):
                // One change: the echo leaves and the desktop's event takes its place.
                pending.removeAll { $0.txnId == txnId }
                upsert(Bubble(event))
            case .messageDiscarded(let txnId):
                pending.removeAll { $0.txnId == txnId }
            case .groupReset:
                break  // handled above
            case .groupCreated, .groupChanged, .sessionChanged, .sessionSacrificed:
                break  // the header and member list would observe these
            }
        }
    }

    private func upsert(_ bubble: Bubble) {
        if let index = index(of: bubble.seq) {
            bubbles[index] = bubble
        } else if let first = bubbles.first?.seq, bubble.seq < first {
            // Not loaded yet: paging back will read it as stored, this change included.
            return
        } else {
            // seq only grows, so appending keeps the bubbles in timeline order.
            bubbles.append(bubble)
        }
    }

    private func index(of seq: UInt64) -> Int? {
        bubbles.lastIndex { $0.seq == seq }
    }

    private func report(_ message: String) { lastError = message }
}

/// Keeps this phone's replicas of the desktop's groups in step: the desktop (`coven-group serve
/// --listen 100.x.y.z:7420` on the user's private network) is their home, reached with the
/// library's HTTP transport and the desktop's owner token (kept in the Keychain). A sync sends
/// the outbox in order, then pulls what changed; it runs off the main thread, one at a time,
/// after every send and on a timer, and an unreachable desktop leaves everything queued
/// (`CovenError.Unavailable`) for the next one.
final class DesktopSync: @unchecked Sendable {
    private let coven: Coven
    private let transport: SyncTransport
    private let queue = DispatchQueue(label: "coven.sync")
    private var home: String?
    private var timer: DispatchSourceTimer?

    init(coven: Coven, desktop: URL, token: String) throws {
        self.coven = coven
        // Each round trip gives up after 15 s, so a sync never hangs on a dead network.
        transport = try httpSyncTransport(baseUrl: desktop.absoluteString, token: token, timeoutMs: 15_000)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now(), repeating: .seconds(5))
        timer.setEventHandler { [weak self] in self?.syncNow() }
        timer.resume()
        self.timer = timer
    }

    deinit { timer?.cancel() }

    /// Groups the desktop has (each a replica here), to open with `ChatThread(coven:groupId:sync:)`.
    func groups() throws -> [GroupConversation] {
        try coven.listGroups().filter { try coven.homeOf(groupId: $0.id) != nil }
    }

    /// A new group homed on the desktop; it appears here once the desktop has made it.
    func createGroup(title: String?, memberIds: [String]) {
        queue.async { [self] in
            guard let home else { return syncNow() }
            _ = try? coven.createGroupAt(homeStoreId: home, title: title, memberIds: memberIds)
            syncNow()
        }
    }

    func syncSoon() { queue.async { [weak self] in self?.syncNow() } }

    /// On `queue` only.
    private func syncNow() {
        do {
            home = try coven.sync(transport: transport, homeStoreId: home).homeStoreId
        } catch CovenError.Unavailable {
            // Offline: the outbox keeps every message; the next sync sends it, once.
        } catch {
            NSLog("sync with the desktop failed: \(error)")
        }
    }
}

/// The library calls listeners on a delivery thread of its own, never holding a library lock.
/// Hop to the main queue in order (FIFO), where the thread applies them by rev.
private final class MainActorListener: GroupListener, @unchecked Sendable {
    private weak var thread: ChatThread?

    init(_ thread: ChatThread) { self.thread = thread }

    func onUpdates(updates: [GroupChange]) throws {
        DispatchQueue.main.async { [weak thread] in
            MainActor.assumeIsolated { thread?.apply(updates) }
        }
    }
}

/// A familiar whose replies come from the desktop daemon: register it once with
/// `coven.registerHostHarness(name: "daemon", harness: DaemonHarness(base: url))` and give
/// familiars `harness: "daemon"`. Workers call `runTurn` concurrently, one call per member, off
/// the main thread; blocking here is expected. Return `true` once the reply is whole; throwing
/// (or `sink.fail`, or returning `false`) fails this member only.
final class DaemonHarness: Harness, @unchecked Sendable {
    private let base: URL
    private let session = URLSession(configuration: .ephemeral)

    init(base: URL) { self.base = base }

    func runTurn(request: TurnRequest, sink: ReplySink) throws -> Bool {
        var http = URLRequest(url: base.appendingPathComponent("sessions/\(request.sessionId)/turns"))
        http.httpMethod = "POST"
        http.setValue("application/json", forHTTPHeaderField: "Content-Type")
        http.httpBody = try JSONSerialization.data(withJSONObject: [
            "familiar": request.familiar.id,
            "prompt": request.prompt,
            "resume": request.resumeToken as Any,
        ])

        let done = DispatchSemaphore(value: 0)
        var failure: Error?
        let stream = Task {
            defer { done.signal() }
            do {
                let (lines, response) = try await session.bytes(for: http)
                guard (response as? HTTPURLResponse)?.statusCode == 200 else {
                    throw CovenError.Harness(reason: "daemon answered \(response)")
                }
                // One JSON object per line: {"delta": "..."} while streaming, {"resume": "..."}.
                for try await line in lines.lines {
                    if sink.isCancelled() { return }
                    guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
                    if let delta = object["delta"] as? String { sink.delta(text: delta) }
                    if let token = object["resume"] as? String { sink.setResumeToken(token: token) }
                    if object["keepalive"] != nil { sink.keepAlive() }
                }
            } catch {
                failure = error
            }
        }
        // Cancel (the user's stop, or the silence timeout) ends the request promptly.
        while done.wait(timeout: .now() + .milliseconds(250)) == .timedOut {
            if sink.isCancelled() { stream.cancel() }
        }
        if let failure, !sink.isCancelled() {
            throw failure as? CovenError ?? CovenError.Harness(reason: "\(failure)")
        }
        return true
    }
}
