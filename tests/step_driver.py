"""Run one seqatlas command that writes an atlas, pausing before each of its steps on disk:
every rename, replace, hard link, removal and tree removal under the atlas (the commit of
a part, of a log entry, a fold of ``atlas.json``, an index build swapped in, a retired part
deleted) waits until the controller says go. Used by tests/test_snapshots.py and
benchmarks/ to interleave readers with a writer at every step::

    python tests/step_driver.py CONTROL_DIR ATLAS -- ingest more.fa --atlas ATLAS ...

Before step N the driver writes ``CONTROL_DIR/step-N.json`` (the event and its path) and
waits for ``CONTROL_DIR/go-N``; it writes ``CONTROL_DIR/done.json`` (the exit code) at the
end. The pauses come from a Python audit hook, so no seqatlas code is changed for them."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

_DESTINATION_EVENTS = {"os.rename": 1, "os.replace": 1, "os.link": 1}
_PATH_EVENTS = {"os.remove": 0, "os.rmdir": 0, "shutil.rmtree": 0, "os.truncate": 0}
POLL_SECONDS = 0.002


class Stepper:
    def __init__(self, control: Path, atlas: Path):
        self.control = control
        self.atlas = os.path.realpath(atlas)
        self.step = 0
        self.busy = False

    def __call__(self, event: str, args) -> None:
        where = _DESTINATION_EVENTS.get(event, _PATH_EVENTS.get(event))
        if where is None or self.busy:
            return
        path = args[where]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(path))
        if path != self.atlas and not path.startswith(self.atlas + os.sep):
            return
        self.busy = True  # the handshake's own file operations do not pause
        try:
            self.step += 1
            self._say(f"step-{self.step}.json", {"step": self.step, "event": event,
                                                 "path": os.path.relpath(path, self.atlas)})
            go = self.control / f"go-{self.step}"
            while not go.exists():
                time.sleep(POLL_SECONDS)
        finally:
            self.busy = False

    def _say(self, name: str, value: dict) -> None:
        tmp = self.control / f".{name}.tmp"
        tmp.write_text(json.dumps(value))
        os.replace(tmp, self.control / name)


def main(argv: list[str]) -> int:
    control, atlas, separator, *command = argv
    assert separator == "--", "usage: step_driver.py CONTROL ATLAS -- COMMAND..."
    stepper = Stepper(Path(control), Path(atlas))
    sys.addaudithook(stepper)
    from seqatlas.cli.main import main as seqatlas

    code = 1
    try:
        code = seqatlas(command)
    finally:
        stepper.busy = True
        stepper._say("done.json", {"code": code, "steps": stepper.step})
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
