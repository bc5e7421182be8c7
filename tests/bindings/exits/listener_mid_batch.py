"""Exits while a Python listener is handling a batch: the interpreter ends the delivery thread.

    python3 listener_mid_batch.py STORE_PATH

Prints one JSON line with what was acknowledged before the exit.
"""

import json
import sys
import threading
import time

import coven_group as cg

delivering = threading.Event()


class Slow(cg.GroupListener):
    def on_updates(self, updates):
        delivering.set()
        for _ in updates:
            time.sleep(0.0005)


coven = cg.Coven.open(sys.argv[1], cg.Config(scripted_delay_ms=1))
coven.register_familiar(
    cg.Familiar(id="ada", display_name="Ada", harness="scripted", model="words:5000")
)
group = coven.create_group("Exit", ["ada"], None)
subscription = coven.subscribe(group.id, 0, Slow())
turn = coven.send(group.id, "Talk at length", "Sam")
if not delivering.wait(60):
    sys.exit("the listener was never called")
print(json.dumps({"group": group.id, "turn": turn.turn_id, "user_seq": turn.user_event.seq}), flush=True)
