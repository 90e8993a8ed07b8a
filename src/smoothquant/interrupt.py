"""Ctrl-C that works within a second, even in the middle of one long tensor operation.

Python turns SIGINT into ``KeyboardInterrupt`` only between bytecodes of the main thread. A
forward pass is thousands of short torch operations, so that is usually immediate; but one
operation can run for many seconds (attention over a very long window, a large GEMM on a busy
CPU) and the interrupt waits for it. :func:`install` adds a watchdog thread woken by the signal
itself (``signal.set_wakeup_fd``, written by the C-level handler while the main thread is still
inside torch, which releases the GIL): if the main thread has not finished within
:data:`GRACE_SECONDS`, the watchdog removes the temporary folders this process was writing
(:func:`smoothquant.tmpdirs.writing`), prints the one-line message and exits with status 130.
The normal path (the main thread raising ``KeyboardInterrupt``, ``finally`` blocks removing
their temporaries, the CLI printing the same line and calling :func:`leave`) stays the first
choice.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time

GRACE_SECONDS = 0.75  # how long the main thread gets to stop by itself
EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C
MESSAGE = "smoothquant: interrupted"

_lock = threading.Lock()
_state = {"reported": False, "installed": False}


def report() -> None:
    """Print the interruption line; once per process where the watchdog runs, whichever of it
    and the main thread comes first."""
    with _lock:
        if not (_state["installed"] and _state["reported"]):
            _state["reported"] = True
            sys.stdout.flush()
            print(MESSAGE, file=sys.stderr, flush=True)


def leave() -> int:
    """After the main thread stopped by itself (its ``finally`` blocks have run): on the command
    line, exit at once, since tearing down torch's thread pools and a model's tensors takes
    seconds; inside Python, the exit status to return."""
    report()
    if _state["installed"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    return EXIT_CODE


def _exit_now() -> None:
    from smoothquant.tmpdirs import writing

    for path in writing():
        shutil.rmtree(path, ignore_errors=True)
    report()
    os._exit(EXIT_CODE)


def _watch(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT in data:
            time.sleep(GRACE_SECONDS)
            _exit_now()


def install() -> bool:
    """Start the watchdog (once per process, from the main thread); False where that is not
    possible (another thread, or a wakeup fd someone else set, which this does not replace)."""
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        return _state["installed"]
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    if previous != -1:  # an event loop owns it
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return False
    threading.Thread(target=_watch, args=(read_fd,), name="smoothquant-interrupt", daemon=True).start()
    _state["installed"] = True
    return True
