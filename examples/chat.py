"""The demo in Python: three familiars answer one prompt live, each line attributed and
seq-numbered as it streams from a Python listener, then the canonical timeline is printed.

    bindings/generate.sh            # builds the library and the Python module
    PYTHONPATH=target/bindings/python python3 examples/chat.py
"""

import datetime
import os
import queue
import sys
import tempfile
import weakref

import coven_group as cg

FAMILIARS = {"morgana": "Morgana", "merlin": "Merlin", "nimue": "Nimue"}
PROMPTS = ["Who keeps the grail tonight?", "And who guards the gate?"]


class Transcript:
    """A view of one group: owns its subscription and receives the changes on the main thread.

    The listener reaches the view through a weak reference. Were the view itself the listener,
    it would hold its own subscription and the library would hold it: a cycle across the FFI that
    keeps it receiving changes after everything else let it go.
    """

    def __init__(self, coven, group_id, after_rev):
        self.changes = queue.Queue()
        self.subscription = coven.subscribe(group_id, after_rev, Forwarder(self))

    def close(self):
        self.subscription.cancel()


class Forwarder(cg.GroupListener):
    """Runs on the subscription's delivery thread; hands every change to the main thread."""

    def __init__(self, transcript):
        self.transcript = weakref.ref(transcript)

    def on_updates(self, updates):
        transcript = self.transcript()
        if transcript is not None:
            for change in updates:
                transcript.changes.put(change)


def who(event):
    if event.kind == cg.EventKind.USER:
        return event.author or "you"
    if event.kind == cg.EventKind.FAMILIAR:
        return FAMILIARS.get(event.familiar_id, event.familiar_id)
    return "·"


def render(event):
    error = f"  [{event.error.kind.name}: {event.error.message}]" if event.error else ""
    return f"#{event.seq:<3} {who(event):<8} {event.text}{error}"


def print_live(update):
    if update.is_event_appended() and update.event.kind == cg.EventKind.FAMILIAR:
        print(f"#{update.event.seq:<3} {who(update.event):<8} ▸ {update.event.text}")
    elif update.is_event_appended():
        print(render(update.event))
    elif update.is_reply_delta():
        print(f"#{update.seq:<3} {FAMILIARS[update.familiar_id]:<8} ▸ {update.text}")
    elif update.is_reply_finished():
        event = update.event
        if event.error:
            print(f"#{event.seq:<3} {who(event):<8} ✗ {event.error.kind.name}: {event.error.message}")
        else:
            print(f"#{event.seq:<3} {who(event):<8} ✓ done ({len(event.text)} chars)")


def main():
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "coven.redb")
        coven = cg.Coven.open(path, cg.Config(scripted_delay_ms=30))
        for familiar_id, name in FAMILIARS.items():
            coven.register_familiar(cg.Familiar(id=familiar_id, display_name=name, harness="scripted"))
        group = coven.create_group("Round table", list(FAMILIARS), None)
        print(f'group "{group.title}" ({group.id}) with scripted familiars, stored at {path}\n')

        transcript = Transcript(coven, group.id, coven.get_group(group.id).rev)
        for prompt in PROMPTS:
            turn = coven.send(group.id, prompt, "Arthur")
            finished = 0
            while finished < len(FAMILIARS):
                change = transcript.changes.get(timeout=120)
                print_live(change.update)
                finished += change.update.is_reply_finished()
            coven.wait_turn(turn.turn_id, datetime.timedelta(seconds=10))
            print()
        transcript.close()

        snapshot = coven.get_group(group.id)
        print(f"canonical timeline (rev {snapshot.rev}):")
        for event in snapshot.events:
            print(render(event))
        coven.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # The library's threads end with the interpreter; what was committed stays committed.
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
