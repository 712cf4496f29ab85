"""A workdir is one experiment: resumed, finished or refused — never silently mixed.

A run's workdir records the canonical form of the config it was made for (``experiment.json``, see
:mod:`smoothmax.identity`). Claiming it for a config:

| the workdir holds                        | without ``restart``             | with ``restart``                      |
|------------------------------------------|---------------------------------|---------------------------------------|
| nothing (or does not exist)              | claimed, the config recorded    | the same                              |
| a run of the same experiment             | resumed (or its result returned)| the old run removed, then as new      |
| a run of another experiment              | refused: the differing keys     | the old run removed, then as new      |
| run files but no record                  | refused                         | the old run removed, then as new      |

"The old run" is every file a run writes (:data:`RUN_FILES`): checkpoints, metrics, summary, config,
record and time ledger, so that nothing of it survives into the new run. A claim holds an exclusive lock (``.lock``) until
released: a second process claiming the same workdir is refused while the first lives, whatever the
config, and the lock dies with its holder (see :class:`~smoothmax.files.ExclusiveLock`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from smoothmax.config import ConfigError
from smoothmax.files import ExclusiveLock, Locked, atomic_write_text
from smoothmax.identity import differences

RECORD = "experiment.json"
RUN_FILES = (RECORD, "config.json", "metrics.jsonl", "summary.json", "checkpoints", "time")


class WorkdirError(ConfigError):
    """A workdir that holds another experiment, or that another live process is training."""


class WorkdirBusy(WorkdirError):
    """Another live process holds the workdir's lock."""


def read_record(workdir) -> dict | None:
    path = Path(workdir) / RECORD
    return json.loads(path.read_text()) if path.exists() else None


def _has_run(workdir: Path) -> bool:
    return any((workdir / name).exists() for name in RUN_FILES)


def discard_run(workdir: Path) -> None:
    """Remove every file of the run in ``workdir`` (the record last: a kill midway still refuses a plain
    rerun, and a ``--restart`` rerun finishes the job)."""
    for name in RUN_FILES[1:] + RUN_FILES[:1]:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def claim(workdir, form: dict, *, restart: bool = False) -> ExclusiveLock:
    """Lock ``workdir`` for the experiment whose canonical form is ``form``; see the module's table.

    Returns the held lock (release it when the run ends).
    """
    workdir = Path(workdir)
    lock = ExclusiveLock(workdir / ".lock")
    try:
        lock.acquire()
    except Locked as err:
        raise WorkdirBusy(f"workdir {workdir} is in use by another process ({err})") from None
    try:
        recorded = read_record(workdir)
        if restart:
            discard_run(workdir)
        elif recorded is not None and recorded["canonical"] != form:
            changed = "; ".join(differences(recorded["canonical"], form))
            raise WorkdirError(
                f"workdir {workdir} holds another experiment ({changed}): rerun with its config, choose a "
                "new --workdir, or pass --restart to discard the old run"
            )
        elif recorded is None and _has_run(workdir):
            raise WorkdirError(
                f"workdir {workdir} holds run files but no {RECORD}: choose a new --workdir, or pass "
                "--restart to discard them"
            )
        if read_record(workdir) is None:
            atomic_write_text(workdir / RECORD, json.dumps({"canonical": form}, indent=2))
    except BaseException:
        lock.release()
        raise
    return lock


class TimeLedger:
    """The wall time every process has spent on a run, killed ones included.

    Each process keeps its own entry in ``folder/time/`` (host, pid, start) up to date: after its first step
    (compilation), every logging interval and every epoch. A run's ``wall_seconds`` is the sum of the
    entries, so a SIGKILL loses at most the time since that process's last update, and the work it did
    after its last checkpoint, redone by the next process, is paid for twice, as it was.
    """

    def __init__(self, folder, start: float, writer: bool = True):
        self.dir, self.start, self.writer = Path(folder) / "time", start, writer
        self.name = f"{socket.gethostname()}-{os.getpid()}-{int(start * 1e6)}.json"

    def update(self) -> None:
        if self.writer:
            atomic_write_text(self.dir / self.name, json.dumps({"seconds": time.time() - self.start}))

    def total(self) -> float:
        """Seconds summed over every process of the run, this one up to now."""
        self.update()
        entries = [p for p in self.dir.glob("*.json") if p.name != self.name]
        return time.time() - self.start + sum(json.loads(p.read_text())["seconds"] for p in entries)
