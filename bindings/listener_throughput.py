"""How many updates per second a Python listener takes in: the per-update cost of crossing the
FFI (lifting each change into Python objects) and calling Python.

    COVEN_FEATURES=testing bindings/generate.sh --release
    PYTHONPATH=target/bindings/python python3 bindings/listener_throughput.py

Builds a group whose timeline holds at least 100,000 `ReplyDelta` changes (8 scripted members
streaming one word per millisecond, so deltas are not coalesced), then subscribes from rev 0:
the store replays the backlog far faster than Python consumes it, so the rate measured is the
listener's. Prints one line per run and the median.
"""

import datetime
import statistics
import threading
import time

import coven_group as cg

TARGET_DELTAS = 100_000
MEMBERS = 8
RUNS = 3


class Counter(cg.GroupListener):
    """Touches every update the way a chat view would (kind, seq, text), nothing more."""

    def __init__(self, last_rev):
        self.last_rev = last_rev
        self.updates = 0
        self.deltas = 0
        self.characters = 0
        self.done = threading.Event()

    def on_updates(self, updates):
        for change in updates:
            update = change.update
            self.updates += 1
            if update.is_reply_delta():
                self.deltas += 1
                self.characters += len(update.text)
            if change.rev >= self.last_rev:
                self.done.set()


def build(coven):
    for i in range(MEMBERS):
        coven.register_familiar(
            cg.Familiar(id=f"f{i}", display_name=f"F{i}", harness="scripted", model="words:2000")
        )
    group = coven.create_group("throughput", [f"f{i}" for i in range(MEMBERS)], None)
    deltas = 0
    while deltas < TARGET_DELTAS:
        turn = coven.send(group.id, "stream", None)
        coven.wait_turn(turn.turn_id, datetime.timedelta(minutes=10))
        deltas = count_deltas(coven, group.id)
    return group, deltas


def count_deltas(coven, group_id):
    deltas, after = 0, 0
    while True:
        page = coven.changes_since(group_id, after, 10_000)
        if not page:
            return deltas
        deltas += sum(1 for c in page if c.update.is_reply_delta())
        after = page[-1].rev


def main():
    coven = cg.Coven.open_in_memory(cg.Config(durable=False, scripted_delay_ms=1))
    group, deltas = build(coven)
    head = coven.get_group(group.id).rev
    print(f"group with {head} changes, {deltas} of them ReplyDelta")
    rates = []
    for run in range(RUNS):
        counter = Counter(head)
        started = time.perf_counter()
        subscription = coven.subscribe(group.id, 0, counter)
        if not counter.done.wait(600):
            raise SystemExit("the listener did not receive the backlog within 10 minutes")
        elapsed = time.perf_counter() - started
        subscription.cancel()
        rate = counter.updates / elapsed
        rates.append(rate)
        print(
            f"run {run + 1}: {counter.updates} updates ({counter.deltas} deltas) in {elapsed:.3f} s"
            f" = {rate:,.0f} updates/s, {1e6 / rate:.1f} µs per update"
        )
    median = statistics.median(rates)
    print(f"median: {median:,.0f} updates/s ({1e6 / median:.1f} µs per update)")
    coven.close()


if __name__ == "__main__":
    main()
