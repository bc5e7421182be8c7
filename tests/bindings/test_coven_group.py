"""The Python binding, end to end: `tests/bindings.rs` generates the module with the in-crate
generator and runs this file (`cargo test`). Every wait is on a condition with a generous
deadline; nothing sleeps and hopes.
"""

import datetime
import os
import tempfile
import threading
import unittest
import uuid

import coven_group as cg

DEADLINE = 60.0
WAIT = datetime.timedelta(seconds=DEADLINE)
SHORT = datetime.timedelta(milliseconds=50)
PAGE = 10_000


def scripted(familiar_id, name, words):
    return cg.Familiar(
        id=familiar_id, display_name=name, harness="scripted", model=f"words:{words}"
    )


def hosted(familiar_id, name, harness):
    return cg.Familiar(id=familiar_id, display_name=name, harness=harness)


def at(seconds):
    return datetime.datetime.fromtimestamp(1_700_000_000 + seconds, tz=datetime.timezone.utc)


class Recorder(cg.GroupListener):
    """A listener that keeps every change it is given, in delivery order."""

    def __init__(self):
        self.changes = []
        self.batches = 0
        self.threads = set()
        self.cond = threading.Condition()

    def on_updates(self, updates):
        with self.cond:
            self.changes.extend(updates)
            self.batches += 1
            self.threads.add(threading.get_ident())
            self.cond.notify_all()

    def wait_until(self, what, predicate):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.changes), DEADLINE):
                raise AssertionError(f"listener never saw {what}; got {len(self.changes)} changes")
            return list(self.changes)

    def wait_for_rev(self, rev):
        return self.wait_until(f"rev {rev}", lambda c: bool(c) and c[-1].rev >= rev)


def finished_replies(changes):
    return [c.update.event for c in changes if c.update.is_reply_finished()]


def paged(fetch, position):
    """Everything `fetch(after)` pages out, following `position` of each page's last item."""
    items, after = [], 0
    while page := fetch(after):
        items.extend(page)
        after = position(page[-1])
    return items


def all_changes(coven, group_id):
    return paged(lambda after: coven.changes_since(group_id, after, 7), lambda c: c.rev)


def all_events(coven, group_id):
    return paged(lambda after: coven.events_since(group_id, after, 3), lambda e: e.seq)


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "coven.redb")
        self.coven = cg.Coven.open(self.path, cg.Config())

    def tearDown(self):
        self.coven.close()
        self.dir.cleanup()

    def group_of(self, *familiars, title="Coven"):
        for familiar in familiars:
            self.coven.register_familiar(familiar)
        return self.coven.create_group(title, [f.id for f in familiars], None)


class FanOut(StoreTestCase):
    def test_multiplexed_stream_is_attributed_and_in_seq_order(self):
        words = {"ada": 40, "bo": 25, "cy": 60}
        group = self.group_of(*(scripted(f, f.title(), n) for f, n in words.items()))
        listener = Recorder()
        subscription = self.coven.subscribe(group.id, 0, listener)

        turn = self.coven.send(group.id, "Hello, all three", "Sam")
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))
        changes = listener.wait_until("three finished replies", lambda c: len(finished_replies(c)) == 3)
        subscription.cancel()

        self.assertEqual(turn.user_event.seq, 1)
        self.assertEqual(turn.user_event.kind, cg.EventKind.USER)
        self.assertEqual(turn.user_event.author, "Sam")
        # Exactly once, in rev order, from the group's creation on, on one delivery thread.
        self.assertEqual([c.rev for c in changes], list(range(1, len(changes) + 1)))
        self.assertTrue(changes[0].update.is_group_created())
        self.assertEqual(len(listener.threads), 1)
        self.assertNotIn(threading.get_ident(), listener.threads)

        replies = finished_replies(changes)
        self.assertEqual(sorted(r.seq for r in replies), [2, 3, 4])
        self.assertEqual(sorted(r.familiar_id for r in replies), sorted(words))
        for reply in replies:
            self.assertEqual(reply.kind, cg.EventKind.FAMILIAR)
            self.assertEqual(reply.turn_id, turn.turn_id)
            self.assertFalse(reply.streaming)
            self.assertIsNone(reply.error)
            self.assertEqual(len(reply.text.split()), words[reply.familiar_id])
            # The first output claims the seq (EventAppended); the deltas of that seq all carry
            # its familiar, and together they add up to the final text.
            (claimed,) = [
                c.update.event for c in changes if c.update.is_event_appended() and c.update.event.seq == reply.seq
            ]
            self.assertEqual((claimed.familiar_id, claimed.streaming), (reply.familiar_id, True))
            deltas = [c.update for c in changes if c.update.is_reply_delta() and c.update.seq == reply.seq]
            self.assertEqual({d.familiar_id for d in deltas}, {reply.familiar_id})
            self.assertEqual(claimed.text + "".join(d.text for d in deltas), reply.text)
        # The stored log is the live stream but for each finished reply's deltas, which it keeps
        # as one change carrying all of their text.
        stored = all_changes(self.coven, group.id)
        self.assertEqual(
            [c for c in changes if not c.update.is_reply_delta()],
            [c for c in stored if not c.update.is_reply_delta()],
        )
        for reply in replies:
            (claimed,) = [
                c.update.event for c in stored if c.update.is_event_appended() and c.update.event.seq == reply.seq
            ]
            deltas = [c.update for c in stored if c.update.is_reply_delta() and c.update.seq == reply.seq]
            self.assertLessEqual(len(deltas), 1)
            self.assertEqual(claimed.text + "".join(d.text for d in deltas), reply.text)

    def test_resync_with_get_group_and_changes_since(self):
        group = self.group_of(scripted("ada", "Ada", 12), scripted("bo", "Bo", 9))
        turn = self.coven.send(group.id, "Report in", None)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))
        self.coven.append_user_message(group.id, "Thanks", "Sam")

        snapshot = self.coven.get_group(group.id)
        self.assertEqual(snapshot.group, self.coven.list_groups()[0])
        self.assertEqual([e.seq for e in snapshot.events], [1, 2, 3, 4])
        self.assertEqual(snapshot.events, all_events(self.coven, group.id))
        changes = all_changes(self.coven, group.id)
        self.assertEqual(snapshot.rev, changes[-1].rev)

        # A client that saw up to some rev pulls exactly the rest.
        middle = changes[len(changes) // 2].rev
        self.assertEqual(self.coven.changes_since(group.id, middle, PAGE), [c for c in changes if c.rev > middle])
        self.assertEqual(self.coven.wait_for_changes(group.id, snapshot.rev, 10, SHORT), [])

        woken = []
        waiter = threading.Thread(
            target=lambda: woken.extend(self.coven.wait_for_changes(group.id, snapshot.rev, 10, WAIT))
        )
        waiter.start()
        appended = self.coven.append_user_message(group.id, "One more", None)
        waiter.join(DEADLINE)
        self.assertFalse(waiter.is_alive())
        self.assertEqual([c.update.event for c in woken if c.update.is_event_appended()], [appended])

        self.coven.set_cursor(group.id, "phone", middle)
        self.assertEqual(self.coven.get_cursor(group.id, "phone"), middle)
        self.assertIsNone(self.coven.get_cursor(group.id, "tablet"))

    def test_tail_then_pages_back_to_the_first_event(self):
        group = self.group_of(scripted("ada", "Ada", 4))
        for i in range(23):
            self.coven.append_user_message(group.id, f"message {i}", None)
        turn = self.coven.send(group.id, "and you?", None)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))

        tail = self.coven.get_group_tail(group.id, 10)
        snapshot = self.coven.get_group(group.id)
        self.assertEqual(tail.group, snapshot.group)
        self.assertEqual(tail.rev, snapshot.rev)
        self.assertEqual([e.seq for e in tail.events], list(range(16, 26)))
        self.assertTrue(tail.has_earlier)
        self.assertEqual(tail.events[-1].text, "w0 w1 w2 w3")

        pages = [tail.events]
        while page := self.coven.events_before(group.id, pages[-1][0].seq, 10):
            pages.append(page)
        self.assertEqual([len(p) for p in pages], [10, 10, 5])
        self.assertEqual([e for p in reversed(pages) for e in p], snapshot.events)
        with self.assertRaises(cg.CovenError.InvalidInput):
            self.coven.events_before(group.id, 27, 10)


class Adoption(StoreTestCase):
    def test_adopt_interleaves_histories_and_keeps_sessions(self):
        for familiar in (scripted("ada", "Ada", 3), scripted("bo", "Bo", 3)):
            self.coven.register_familiar(familiar)
        ada_session, bo_session = str(uuid.uuid4()), str(uuid.uuid4())
        user, familiar = cg.HistoryRole.USER, cg.HistoryRole.FAMILIAR
        group = self.coven.adopt_group(
            "Adopted",
            [
                cg.AdoptedMember(
                    familiar_id="ada",
                    session_id=ada_session,
                    history=[
                        cg.HistoryMessage(role=user, text="Plan the trip", timestamp=at(0), author="Sam"),
                        cg.HistoryMessage(role=familiar, text="Ada: by train", timestamp=at(2)),
                    ],
                ),
                cg.AdoptedMember(
                    familiar_id="bo",
                    session_id=bo_session,
                    history=[
                        cg.HistoryMessage(role=user, text="Plan the trip", timestamp=at(1), author="Sam"),
                        cg.HistoryMessage(role=familiar, text="Bo: by boat", timestamp=at(3)),
                    ],
                ),
            ],
        )
        events = self.coven.get_group(group.id).events
        # The looped copies of one prompt fold into one user message.
        self.assertEqual(
            [(e.seq, e.kind, e.familiar_id, e.text) for e in events],
            [
                (1, cg.EventKind.USER, None, "Plan the trip"),
                (2, cg.EventKind.FAMILIAR, "ada", "Ada: by train"),
                (3, cg.EventKind.FAMILIAR, "bo", "Bo: by boat"),
            ],
        )
        self.assertEqual(events[1].timestamp, at(2))
        self.assertEqual(
            {(s.familiar_id, s.id) for s in self.coven.sessions_of(group.id)},
            {("ada", ada_session), ("bo", bo_session)},
        )
        self.assertEqual([m.session_id for m in group.members], [ada_session, bo_session])


class PythonHarness(cg.Harness):
    """Streams a reply per member; all members must be inside `run_turn` at once to proceed."""

    def __init__(self, members, raise_for=()):
        self.barrier = threading.Barrier(members, timeout=DEADLINE)
        self.raise_for = dict(raise_for)
        self.threads = set()
        self.lock = threading.Lock()

    def run_turn(self, request, sink):
        with self.lock:
            self.threads.add(threading.get_ident())
        # Only concurrent calls get past this: a serialized caller breaks the barrier.
        self.barrier.wait()
        familiar = request.familiar.id
        if familiar in self.raise_for:
            sink.delta("partial ")
            raise self.raise_for[familiar]
        for word in ("from", familiar, "about", request.user_text):
            sink.delta(word + " ")
        sink.set_resume_token(f"token-{familiar}")
        return True


class HostHarnesses(StoreTestCase):
    def test_python_harness_is_called_concurrently_from_worker_threads(self):
        harness = PythonHarness(4)
        self.coven.register_host_harness("python", harness)
        members = [hosted(f"m{i}", f"M{i}", "python") for i in range(4)]
        group = self.group_of(*members)

        turn = self.coven.send(group.id, "ping", None)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))

        self.assertFalse(harness.barrier.broken)
        self.assertEqual(len(harness.threads), 4)
        self.assertNotIn(threading.get_ident(), harness.threads)
        replies = {e.familiar_id: e for e in self.coven.get_group(group.id).events[1:]}
        self.assertEqual(sorted(replies), [m.id for m in members])
        for familiar_id, reply in replies.items():
            self.assertEqual(reply.text, f"from {familiar_id} about ping ")
            self.assertIsNone(reply.error)
        sessions = {s.familiar_id: s for s in self.coven.sessions_of(group.id)}
        self.assertEqual(sessions["m2"].resume_token, "token-m2")
        self.assertEqual(sessions["m2"].status, cg.SessionStatus.IDLE)

    def test_a_raising_harness_fails_only_its_member(self):
        harness = PythonHarness(
            3,
            raise_for={
                "crash": ValueError("python blew up"),
                "refuse": cg.CovenError.Harness("no quota left"),
            },
        )
        self.coven.register_host_harness("python", harness)
        group = self.group_of(
            hosted("crash", "Crash", "python"), hosted("refuse", "Refuse", "python"), hosted("fine", "Fine", "python")
        )

        turn = self.coven.send(group.id, "go", None)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))

        replies = {e.familiar_id: e for e in self.coven.get_group(group.id).events[1:]}
        self.assertEqual(replies["fine"].text, "from fine about go ")
        self.assertIsNone(replies["fine"].error)
        for familiar_id, message in (("crash", "python blew up"), ("refuse", "no quota left")):
            reply = replies[familiar_id]
            self.assertEqual(reply.text, "partial ", familiar_id)
            self.assertEqual(reply.error.kind, cg.ReplyErrorKind.FAILED, familiar_id)
            self.assertIn(message, reply.error.message)
        statuses = {s.familiar_id: s.status for s in self.coven.sessions_of(group.id)}
        self.assertEqual(statuses, {"crash": cg.SessionStatus.FAILED, "refuse": cg.SessionStatus.FAILED, "fine": cg.SessionStatus.IDLE})
        # The group is usable again at once.
        self.coven.append_user_message(group.id, "after the failure", None)

    def test_an_exception_that_is_not_an_exception_fails_the_reply(self):
        # BaseExceptions escape the generated code (it catches Exception only); the call then
        # returns no result, which must fail the reply, never complete it.
        import asyncio

        raised = {
            "interrupt": KeyboardInterrupt(),
            "exit": SystemExit(3),
            "cancel": asyncio.CancelledError(),
        }
        harness = PythonHarness(3, raise_for=raised)
        self.coven.register_host_harness("python", harness)
        group = self.group_of(*(hosted(name, name.title(), "python") for name in raised))

        turn = self.coven.send(group.id, "go", None)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))

        replies = {e.familiar_id: e for e in self.coven.get_group(group.id).events[1:]}
        for familiar_id in raised:
            reply = replies[familiar_id]
            self.assertEqual(reply.text, "partial ", familiar_id)
            self.assertIsNotNone(reply.error, familiar_id)
            self.assertEqual(reply.error.kind, cg.ReplyErrorKind.FAILED, familiar_id)
            self.assertFalse(reply.streaming, familiar_id)
        statuses = {s.familiar_id: s.status for s in self.coven.sessions_of(group.id)}
        self.assertEqual(set(statuses.values()), {cg.SessionStatus.FAILED})

    def test_a_base_exception_after_a_cancel_ends_the_reply_cancelled(self):
        started = threading.Event()

        class Interrupted(cg.Harness):
            def run_turn(self, request, sink):
                sink.delta("thinking")
                started.set()
                while not sink.is_cancelled():
                    threading.Event().wait(0.01)
                raise KeyboardInterrupt()

        self.coven.register_host_harness("interrupted", Interrupted())
        group = self.group_of(hosted("slow", "Slow", "interrupted"))
        turn = self.coven.send(group.id, "take your time", None)
        self.assertTrue(started.wait(DEADLINE))
        self.coven.cancel_turn(group.id)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))
        reply = self.coven.get_group(group.id).events[1]
        self.assertEqual((reply.text, reply.error.kind), ("thinking", cg.ReplyErrorKind.CANCELLED))

    def test_cancel_reaches_a_python_harness(self):
        started = threading.Event()

        class Patient(cg.Harness):
            def run_turn(self, request, sink):
                sink.delta("thinking")
                started.set()
                while not sink.is_cancelled():
                    sink.keep_alive()
                    threading.Event().wait(0.01)
                return True

        self.coven.register_host_harness("patient", Patient())
        group = self.group_of(hosted("slow", "Slow", "patient"))
        turn = self.coven.send(group.id, "take your time", None)
        self.assertTrue(started.wait(DEADLINE))
        with self.assertRaises(cg.CovenError.Conflict):
            self.coven.send(group.id, "and another thing", None)
        self.assertEqual(self.coven.cancel_turn(group.id), turn.turn_id)
        self.assertTrue(self.coven.wait_turn(turn.turn_id, WAIT))
        reply = self.coven.get_group(group.id).events[1]
        self.assertEqual((reply.text, reply.error.kind), ("thinking", cg.ReplyErrorKind.CANCELLED))


class Errors(StoreTestCase):
    def test_every_error_variant_is_its_python_exception_type(self):
        group = self.group_of(scripted("ada", "Ada", 2))
        unknown = str(uuid.uuid4())

        with self.assertRaises(cg.CovenError.NotFound) as raised:
            self.coven.get_group(unknown)
        self.assertEqual((raised.exception.what, raised.exception.id), ("group", unknown))

        with self.assertRaises(cg.CovenError.InvalidInput) as raised:
            self.coven.append_user_message("not-an-id", "hi", None)
        self.assertEqual(raised.exception.field, "group_id")
        with self.assertRaises(cg.CovenError.InvalidInput) as raised:
            self.coven.append_user_message(group.id, "nul\0inside", None)
        self.assertEqual(raised.exception.field, "text")

        with self.assertRaises(cg.CovenError.Conflict) as raised:
            cg.Coven.open(self.path, cg.Config())
        self.assertTrue(raised.exception.reason)

        not_a_store = os.path.join(self.dir.name, "garbage.redb")
        with open(not_a_store, "wb") as garbage:
            garbage.write(b"this is not a redb file" * 100)
        with self.assertRaises(cg.CovenError.Storage) as raised:
            cg.Coven.open(not_a_store, cg.Config())
        self.assertTrue(raised.exception.reason)

        with self.assertRaises(cg.CovenError.InvalidInput) as raised:
            cg.Coven.open_in_memory(cg.Config(max_concurrent_runs=0))
        self.assertEqual(raised.exception.field, "config.max_concurrent_runs")

        # Every variant is also the binding's one error base class.
        self.assertTrue(issubclass(cg.CovenError.Harness, cg.CovenError))
        self.coven.close()
        with self.assertRaises(cg.CovenError.Closed):
            self.coven.list_groups()
        # A refused call changed nothing.
        self.coven = cg.Coven.open(self.path, cg.Config())
        self.assertEqual([e.text for e in self.coven.get_group(group.id).events], [])


class Lifecycle(StoreTestCase):
    def test_cancelled_subscription_gets_nothing_more(self):
        group = self.group_of(scripted("ada", "Ada", 2))
        cancelled, live = Recorder(), Recorder()
        subscription = self.coven.subscribe(group.id, 0, cancelled)
        cancelled.wait_for_rev(1)
        self.assertEqual(subscription.group_id(), group.id)
        subscription.cancel()
        subscription.cancel()

        # A subscription lives as long as its handle: keep it.
        live_subscription = self.coven.subscribe(group.id, 0, live)
        event = self.coven.append_user_message(group.id, "after cancel", None)
        # The live subscriber has it, so it was published; the cancelled one has nothing new.
        live.wait_for_rev(event.rev)
        self.assertEqual([c.rev for c in cancelled.changes], [1])
        live_subscription.cancel()

    def test_close_ends_everything_and_releases_the_file(self):
        group = self.group_of(scripted("ada", "Ada", 2))
        head = self.coven.get_group(group.id).rev
        outcome = []

        def long_poll():
            try:
                self.coven.wait_for_changes(group.id, head, 10, WAIT)
                outcome.append("returned")
            except cg.CovenError.Closed:
                outcome.append("closed")

        poller = threading.Thread(target=long_poll)
        poller.start()
        self.coven.close()
        poller.join(DEADLINE)
        self.assertEqual(outcome, ["closed"])
        self.coven.close()
        with self.assertRaises(cg.CovenError.Closed):
            self.coven.send(group.id, "anyone?", None)

        self.coven = cg.Coven.open(self.path, cg.Config())
        self.assertEqual(self.coven.get_group(group.id).group.title, "Coven")
        self.assertEqual(self.coven.recovery(), cg.Recovery(interrupted_replies=0, failed_sessions=0, released_turns=0))

    def test_group_and_session_operations_round_trip(self):
        ada, bo = scripted("ada", "Ada", 2), scripted("bo", "Bo", 2)
        group = self.group_of(ada, title="Before")
        self.assertEqual(self.coven.get_familiar("ada"), ada)
        self.assertEqual(sorted(f.id for f in self.coven.list_familiars()), ["ada"])
        self.coven.register_familiar(bo)

        self.assertEqual(self.coven.rename_group(group.id, "After").title, "After")
        self.assertEqual([m.familiar_id for m in self.coven.add_member(group.id, "bo").members], ["ada", "bo"])
        self.assertEqual([m.familiar_id for m in self.coven.remove_member(group.id, "ada").members], ["bo"])
        notices = [e.notice for e in self.coven.get_group(group.id).events]
        self.assertEqual(
            notices,
            [
                cg.SystemNotice.RENAMED(_from="Before", to="After"),
                cg.SystemNotice.MEMBER_ADDED(familiar_id="bo"),
                cg.SystemNotice.MEMBER_REMOVED(familiar_id="ada"),
            ],
        )

        ada_session = next(s for s in self.coven.sessions_of(group.id) if s.familiar_id == "ada")
        self.assertTrue(self.coven.archive_session(ada_session.id).archived)
        self.assertFalse(self.coven.summon_session(ada_session.id).archived)
        self.assertEqual(self.coven.get_session(ada_session.id).id, ada_session.id)
        self.coven.sacrifice_session(ada_session.id)
        with self.assertRaises(cg.CovenError.NotFound):
            self.coven.get_session(ada_session.id)

        report = self.coven.check()
        self.assertEqual(report.problems, [])
        self.assertEqual((report.groups, report.events, report.familiars), (1, 3, 2))

        self.coven.delete_group(group.id)
        self.assertEqual(self.coven.list_groups(), [])


if __name__ == "__main__":
    unittest.main()
