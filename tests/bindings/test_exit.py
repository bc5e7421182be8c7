"""Interpreter exit while the library's threads call into Python.

CPython ends every thread that asks for the GIL once it is finalizing, with a forced unwind; a
library thread that caught it would abort the process ("FATAL: exception not rethrown"). Each
script here exits (or is interrupted) in the middle of a callback, many times over; every run
must end without a signal, and reopening the store must show everything the script was told was
saved, with a clean integrity check.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import unittest

import coven_group as cg

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXITS = pathlib.Path(__file__).resolve().parent / "exits"
RUNS = 20
DEADLINE = 120


def readme_snippet():
    """The Python snippet of the README's bindings section, exactly as a user would save it."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use from Swift / Kotlin / Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run(args, cwd):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


class ExitMidCallback(unittest.TestCase):
    def assert_exited_cleanly(self, result, run_index):
        self.assertEqual(
            result.returncode,
            0,
            f"run {run_index} ended with {result.returncode}:\n{result.stderr[-2000:]}",
        )
        self.assertNotIn("FATAL", result.stderr)

    def reopen(self, path):
        coven = cg.Coven.open(path, cg.Config())
        self.addCleanup(coven.close)
        report = coven.check()
        self.assertEqual(report.problems, [], f"integrity check after the exit: {report}")
        return coven

    def assert_turn_saved(self, coven, acknowledged):
        snapshot = coven.get_group(acknowledged["group"])
        user = snapshot.events[acknowledged["user_seq"] - 1]
        self.assertEqual(user.kind, cg.EventKind.USER)
        self.assertEqual(user.turn_id, acknowledged["turn"])
        for event in snapshot.events:
            self.assertFalse(event.streaming, "a reply is left streaming after the reopen")
        # The group takes a new message: no turn lock survived the exit.
        coven.append_user_message(acknowledged["group"], "after the exit", None)
        return snapshot

    def test_the_readme_snippet_as_a_script_exits_cleanly(self):
        snippet = readme_snippet()
        self.assertIn("coven.subscribe(", snippet)
        for index in range(RUNS):
            with tempfile.TemporaryDirectory() as scratch:
                script = os.path.join(scratch, "snippet.py")
                pathlib.Path(script).write_text(snippet)
                result = run([script], scratch)
                self.assert_exited_cleanly(result, index)
                coven = self.reopen(os.path.join(scratch, "chat.redb"))
                groups = coven.list_groups()
                self.assertEqual([g.title for g in groups], ["Plans"])
                events = coven.get_group(groups[0].id).events
                self.assertEqual((events[0].seq, events[0].text, events[0].author), (1, "Hello", "Sam"))
                coven.close()

    def exit_mid_callback(self, script):
        for index in range(RUNS):
            with tempfile.TemporaryDirectory() as scratch:
                path = os.path.join(scratch, "coven.redb")
                result = run([str(EXITS / script), path], scratch)
                self.assert_exited_cleanly(result, index)
                acknowledged = json.loads(result.stdout.strip().splitlines()[-1])
                coven = self.reopen(path)
                snapshot = self.assert_turn_saved(coven, acknowledged)
                coven.close()
                yield snapshot

    def test_exit_while_a_python_harness_streams(self):
        for snapshot in self.exit_mid_callback("harness_mid_reply.py"):
            replies = [e for e in snapshot.events if e.kind == cg.EventKind.FAMILIAR]
            self.assertEqual(len(replies), 1)
            reply = replies[0]
            # Partial text kept; ended as failed (the interpreter ended the harness's thread),
            # cancelled (the store closed first) or interrupted (recovered at the reopen).
            self.assertTrue(reply.text.startswith("word "), reply.text[:40])
            self.assertIsNotNone(reply.error)

    def test_exit_while_a_python_listener_handles_a_batch(self):
        for snapshot in self.exit_mid_callback("listener_mid_batch.py"):
            self.assertGreaterEqual(len(snapshot.events), 1)

    def test_ctrl_c_in_the_demo_exits_cleanly(self):
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "chat.py")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # Interrupt while the first replies stream.
            for line in process.stdout:
                if "▸" in line:
                    break
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=DEADLINE)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.assertEqual(process.returncode, 130, stderr[-2000:])
        self.assertNotIn("FATAL", stderr)


if __name__ == "__main__":
    unittest.main()
