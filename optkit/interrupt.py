"""Ctrl-C that stops a long run within seconds, wherever it is, and keeps what finished.

Python raises KeyboardInterrupt only between bytecodes: a TensorFlow call (a converter, a long
graph step) holds it back until it returns, and a child process started with its own signal
handling goes on. So the first SIGINT
- ends this process's child processes (SIGTERM; subprocess.run also kills the one it waits on),
- raises KeyboardInterrupt in the main thread, where the caller writes its partial report, and
- arms a watchdog: if the main thread has not finished within GRACE_S (stuck in C++), the
  watchdog runs the caller's `on_stuck` (write the partial report from what is in memory) and
  ends the process with exit code 130.
A second SIGINT skips the wait. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable, Optional

EXIT_CODE = 130           # 128 + SIGINT, what shells report for Ctrl-C
GRACE_S = 4.0             # the 10-second promise minus the time to write the report (slow under load)
TEMP_MARKERS = (".tmp-", ".optkit-", "optkit-onednn-")


class Interruptible:
    """`with Interruptible(on_stuck): ...` around a long run (main thread only; elsewhere a no-op)."""

    def __init__(self, on_stuck: Callable[[], None]):
        self.on_stuck = on_stuck
        self.hit = False
        self.done = False
        self._previous = None
        self._timer: Optional[threading.Timer] = None
        self._lock = threading.Lock()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        with self._lock:
            self.done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def _handle(self, signum, frame):
        if self.hit:               # the second Ctrl-C: do not wait for the main thread
            self._stuck()
            return
        self.hit = True
        terminate_children()
        self._timer = threading.Timer(GRACE_S, self._stuck)
        self._timer.daemon = True
        self._timer.start()
        raise KeyboardInterrupt

    def _stuck(self):
        with self._lock:
            if self.done:
                return
            self.done = True
        try:
            self.on_stuck()
        finally:
            os._exit(EXIT_CODE)


def terminate_children() -> None:
    """SIGTERM every direct child process (Linux /proc; elsewhere subprocess.run's own kill on
    KeyboardInterrupt is what stops the child it waits on)."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            try:
                os.kill(int(entry), signal.SIGTERM)
            except OSError:
                pass


def remove_temp_files(root: str) -> list:
    """Delete the half-written files and scratch folders an interrupted run leaves under `root`
    (atomic writes' temp names, probe scratch dirs). Returns what was removed."""
    import shutil

    removed = []
    for folder, dirs, files in os.walk(root, topdown=True):
        for name in list(dirs):
            if any(m in name for m in TEMP_MARKERS):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                removed.append(os.path.join(folder, name))
                dirs.remove(name)
        for name in files:
            if any(m in name for m in TEMP_MARKERS):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed.append(os.path.join(folder, name))
                except OSError:
                    pass
    return removed
