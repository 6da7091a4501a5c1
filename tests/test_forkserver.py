"""The fork server behind tests.helpers.runner (tests/forkserver.py): each command is a process of
its own, as ``python SCRIPT ARGS`` would be."""

import json
import os
import signal

import pytest

from tests.helpers import ENV, ROOT, SERVER

PROBE = """
import json, os, sys, numpy
print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "probe": os.environ.get("PROBE"),
                  "draw": int(numpy.random.randint(1 << 30))}))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise RuntimeError("uncaught")
if sys.argv[1] == "sleep":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.slow  # starts the server: imports torch, Hydra, gmcnn
def test_forked_commands_are_processes_of_their_own(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    start = lambda arg, **env: SERVER.start([str(script), arg], {**ENV, **env}, merge_stderr=False)
    three, zero = start("3", PROBE="x").run(60), start("0").run(60)
    assert (three.returncode, zero.returncode) == (3, 0)
    first, second = json.loads(three.stdout), json.loads(zero.stdout)
    assert first["pid"] != os.getpid() and first["cwd"] == str(ROOT) and three.stderr == "to stderr\n"
    assert (first["probe"], second["probe"]) == ("x", None)  # the environment of its own request
    assert first["draw"] != second["draw"]  # numpy reseeded in each child (equal: 1 in 2**30)

    crashed = start("raise").run(60)
    assert crashed.returncode == 1 and "Traceback" in crashed.stderr and "RuntimeError: uncaught" in crashed.stderr

    sleeping = SERVER.start([str(script), "sleep"], ENV, merge_stderr=True)
    assert sleeping.poll() is None
    sleeping.send_signal(signal.SIGKILL)
    assert sleeping.wait(60) == -signal.SIGKILL
