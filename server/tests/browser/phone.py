"""A phone for the cross-device test: the Python binding with a replica store of its own,
syncing with the server (its home) over the library's HTTP transport. Driven by
`server/tests/browser.rs` on behalf of `cross_device.test.mjs`: one JSON request per line on
stdin, one JSON answer per line on stdout (`{"error": ...}` when it failed).
"""

import json
import os
import sys
import time

import coven_group as cg

DEADLINE_S = 60

store = cg.Coven.open(os.environ["COVEN_PHONE_STORE"], cg.Config())
transport = cg.http_sync_transport(
    os.environ["COVEN_PHONE_URL"], os.environ["COVEN_PHONE_TOKEN"], 10_000
)
home = None

ROLES = {cg.EventKind.USER: "user", cg.EventKind.FAMILIAR: "familiar", cg.EventKind.SYSTEM: "system"}


def sync():
    global home
    report = store.sync(transport, home)
    home = report.home_store_id
    return {"changes": report.changes, "snapshots": report.snapshots, "settled": report.settled}


def timeline(group_id):
    snapshot = store.get_group(group_id)
    return {
        "title": snapshot.group.title,
        "events": [
            {
                "seq": e.seq,
                "role": ROLES[e.kind],
                "familiarId": e.familiar_id,
                "author": e.author,
                "text": e.text,
                "streaming": e.streaming,
            }
            for e in snapshot.events
        ],
        "pending": [
            {"txnId": p.txn_id, "text": p.text, "pending": p.state.is_pending()}
            for p in snapshot.pending
        ],
    }


def settled(group_id, events):
    """The group is here with at least `events` events, none streaming, no echo waiting."""
    try:
        shown = timeline(group_id)
    except cg.CovenError.NotFound:
        return None
    done = (
        len(shown["events"]) >= events
        and not any(e["streaming"] for e in shown["events"])
        and not shown["pending"]
    )
    return shown if done else None


def handle(request):
    command = request["cmd"]
    if command == "sync":
        return sync()
    if command == "groups":
        return {"groups": [{"id": g.id, "title": g.title} for g in store.list_groups()]}
    if command == "create":
        if home is None:
            sync()
        entry = store.create_group_at(home, request["title"], request["members"])
        return {"groupId": entry.mutation.group_id, "txnId": entry.txn_id}
    if command == "send":
        entry = store.enqueue(
            cg.Mutation.SEND(group_id=request["groupId"], text=request["text"], author="Phone")
        )
        return {"txnId": entry.txn_id, **timeline(request["groupId"])}
    if command == "timeline":
        return timeline(request["groupId"])
    if command == "wait":
        # Syncs until the group has settled here: polling the home, bounded by the deadline.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            sync()
            shown = settled(request["groupId"], request["events"])
            if shown is not None:
                return shown
            if time.monotonic() > deadline:
                raise TimeoutError(f"the phone never settled: {request}")
            time.sleep(0.1)
    raise ValueError(f"unknown command {command!r}")


for line in sys.stdin:
    try:
        answer = handle(json.loads(line))
    except cg.CovenError as error:
        answer = {"error": f"{type(error).__name__}: {error}", "kind": type(error).__name__}
    except Exception as error:  # any failure is the test's answer, never a dead phone
        answer = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(answer), flush=True)
store.close()
