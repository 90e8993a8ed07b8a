"""Temporary siblings that name their owner, so a later run can tell abandoned ones from live ones.

Everything written atomically (checkpoints, cache entries) is first written into a hidden
sibling of its target, ``.NAME.tmp-PID-RANDOM``, and renamed onto the target when complete. A run
killed in between (Ctrl-C during save, OOM, power loss) leaves that sibling behind; it can hold
hundreds of MB. The next run into the same place removes those whose process is gone, and
reports the ones it cannot attribute (no pid in the name: written by an older version), since
another run may still be writing them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("smoothquant")

KINDS = ("tmp", "old")  # being written; the previous target, moved aside while being replaced

# (folder, name prefix) of every "tmp" sibling this process was handed: what an interrupted run
# removes on its way out (smoothquant.interrupt). "old" siblings hold the user's previous output
# while it is being replaced and are never in it.
_WRITING: set[tuple[Path, str]] = set()


def temp_prefix(target: Path, kind: str = "tmp") -> str:
    """``tempfile.mkdtemp``'s prefix for a hidden sibling of ``target`` owned by this process."""
    prefix = f".{target.name}.{kind}-{os.getpid()}-"
    if kind == "tmp":
        _WRITING.add((target.parent, prefix))
    return prefix


def temp_name(target: Path, kind: str, tag: str) -> Path:
    """The path of a (not yet created) hidden sibling of ``target`` owned by this process."""
    return target.with_name(temp_prefix(target, kind) + tag)


def writing() -> list[Path]:
    """The "tmp" siblings this process created that still exist (being written, or not yet
    cleaned up)."""
    found = []
    for folder, prefix in list(_WRITING):
        try:
            found += [p for p in folder.iterdir() if p.name.startswith(prefix)]
        except OSError:
            continue
    return sorted(found)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """Hidden temporaries of ``target``: (owner process dead, owner unknown). Live owners' ones
    are in neither list."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:{'|'.join(KINDS)})-(?:(\d+)-)?.+$")
    dead, unknown = [], []
    try:
        siblings = sorted(target.parent.iterdir())
    except OSError:  # parent missing or unreadable: nothing to clean
        return [], []
    for path in siblings:
        match = pattern.match(path.name)
        if match is None:
            continue
        if match.group(1) is None:
            unknown.append(path)
        elif not pid_alive(int(match.group(1))):
            dead.append(path)
    return dead, unknown


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporaries of ``target`` left by dead processes; return (and log) the ones
    whose owner is unknown, which are left in place."""
    dead, unknown = leftovers(target)
    for path in dead:
        log.info("removing %s, left by an interrupted run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for path in unknown:
        log.warning(
            "%s looks like a temporary folder left by an interrupted run; delete it if no other "
            "smoothquant run is writing %s",
            path,
            target,
        )
    return unknown
