"""Exits while a Python harness is streaming a reply: the interpreter ends the harness's thread.

    python3 harness_mid_reply.py STORE_PATH

Prints one JSON line with what was acknowledged before the exit.
"""

import datetime
import json
import sys
import threading
import time

import coven_group as cg

streaming = threading.Event()


class Endless(cg.Harness):
    def run_turn(self, request, sink):
        while not sink.is_cancelled():
            sink.delta("word ")
            streaming.set()
            time.sleep(0.001)
        return True


coven = cg.Coven.open(sys.argv[1], cg.Config())
coven.register_host_harness("endless", Endless())
coven.register_familiar(cg.Familiar(id="ada", display_name="Ada", harness="endless"))
group = coven.create_group("Exit", ["ada"], None)
turn = coven.send(group.id, "Keep talking", "Sam")
if not streaming.wait(60):
    sys.exit("the harness never streamed")
# Streamed text is committed within Config.stream_commit_interval_ms: wait until some of the reply
# is in the store, so the exit interrupts a reply whose partial text was acknowledged.
deadline = time.monotonic() + 60
while True:
    snapshot = coven.get_group(group.id)
    if any(e.kind == cg.EventKind.FAMILIAR and e.text.startswith("word ") for e in snapshot.events):
        break
    if time.monotonic() > deadline:
        sys.exit("the reply's text never reached the store")
    coven.wait_for_changes(group.id, snapshot.rev, 100, datetime.timedelta(seconds=1))
print(json.dumps({"group": group.id, "turn": turn.turn_id, "user_seq": turn.user_event.seq}), flush=True)
