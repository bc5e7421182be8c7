"""Sync through the Python binding: a home store and a replica ("the phone") in one process,
connected by a transport written in Python that carries every message as the protocol's JSON,
as a host's network transport would. Run by `tests/bindings.rs` (`cargo test`).
"""

import datetime
import threading
import unittest

import coven_group as cg

WAIT = datetime.timedelta(seconds=60)


class JsonTransport(cg.SyncTransport):
    """Carries each message to the home as JSON and back. `fail_next` makes the next push raise
    the given exception after the home has applied it (a lost answer)."""

    def __init__(self, home):
        self.home = home
        self.fail_next = None
        self.bytes = 0
        self.threads = set()

    def _carry(self, message):
        json = cg.sync_message_to_json(message)
        self.bytes += len(json.encode())
        return cg.sync_message_from_json(json)

    def pull(self, request):
        self.threads.add(threading.get_ident())
        request = self._carry(cg.SyncMessage.PULL_REQUEST(request)).request
        response = self.home.serve_pull(request)
        return self._carry(cg.SyncMessage.PULL_RESPONSE(response)).response

    def push(self, request):
        self.threads.add(threading.get_ident())
        request = self._carry(cg.SyncMessage.PUSH_REQUEST(request)).request
        response = self.home.serve_push(request)
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        return self._carry(cg.SyncMessage.PUSH_RESPONSE(response)).response


class Sync(unittest.TestCase):
    def setUp(self):
        self.home = cg.Coven.open_in_memory(cg.Config())
        self.phone = cg.Coven.open_in_memory(cg.Config())
        for familiar_id in ("ada", "bo"):
            self.home.register_familiar(
                cg.Familiar(id=familiar_id, display_name=familiar_id.title(), harness="scripted")
            )
        self.group = self.home.create_group("Desk", ["ada", "bo"], None)
        self.transport = JsonTransport(self.home)

    def tearDown(self):
        self.phone.close()
        self.home.close()

    def sync(self):
        return self.phone.sync(self.transport, self.home.store_id())

    def wait_home_turns(self):
        for event in self.home.get_group(self.group.id).events:
            if event.kind == cg.EventKind.USER and event.turn_id is not None:
                self.assertTrue(self.home.wait_turn(event.turn_id, WAIT))

    def view(self, coven):
        return [
            (e.seq, e.kind, e.familiar_id, e.author, e.text, e.streaming)
            for e in coven.get_group(self.group.id).events
        ]

    def test_a_send_from_the_phone_streams_back_and_the_timelines_agree(self):
        report = self.phone.sync(self.transport, None)
        self.assertEqual(report.snapshots, 1)
        self.assertEqual(self.phone.home_of(self.group.id), self.home.store_id())

        entry = self.phone.enqueue(
            cg.Mutation.SEND(group_id=self.group.id, text="from the phone", author="Sam")
        )
        tail = self.phone.get_group_tail(self.group.id, 10)
        self.assertEqual([p.txn_id for p in tail.pending], [entry.txn_id])
        self.assertTrue(tail.pending[0].state.is_pending())

        self.sync()
        self.wait_home_turns()
        self.sync()
        self.assertEqual(self.view(self.phone), self.view(self.home))
        self.assertEqual(self.phone.get_group(self.group.id).pending, [])
        self.assertEqual(self.phone.outbox(), [])
        texts = [e.text for e in self.home.get_group(self.group.id).events]
        self.assertEqual(texts.count("from the phone"), 1)
        self.assertEqual(len(texts), 3, texts)
        self.assertGreater(self.transport.bytes, 0)
        self.assertTrue(self.phone.check().problems == [])

    def test_a_direct_write_to_a_replica_group_names_its_home(self):
        self.sync()
        with self.assertRaises(cg.CovenError.Conflict) as refused:
            self.phone.send(self.group.id, "direct", None)
        self.assertIn(self.home.store_id(), str(refused.exception))

    def test_a_transport_that_raises_loses_nothing_and_applies_once(self):
        self.sync()
        self.phone.enqueue(
            cg.Mutation.APPEND_USER_MESSAGE(group_id=self.group.id, text="once", author=None)
        )
        # The home applies the push, then the answer is lost: an ordinary exception, then one
        # that is not an Exception at all (Ctrl-C in the host).
        for failure in (ConnectionError("network down"), KeyboardInterrupt()):
            self.transport.fail_next = failure
            with self.assertRaises(BaseException):
                self.sync()
            self.assertEqual(len(self.phone.outbox()), 1, "the entry stays until answered")
        self.sync()
        texts = [e.text for e in self.home.get_group(self.group.id).events]
        self.assertEqual(texts.count("once"), 1, "applied exactly once")
        self.assertEqual(self.phone.outbox(), [])
        self.assertEqual(self.view(self.phone), self.view(self.home))

    def test_the_transport_is_called_on_the_syncing_thread(self):
        results = []

        def run():
            results.append(self.sync())

        worker = threading.Thread(target=run)
        worker.start()
        worker.join(60)
        self.assertFalse(worker.is_alive())
        self.assertEqual(len(results), 1)
        self.assertEqual(self.transport.threads, {worker.ident})


if __name__ == "__main__":
    unittest.main()
