"""Writing into the user's folders safely: the one place that knows how (issue #17).

  staging(path)      a private temp path next to `path`; on success the result replaces `path`
                     in one step (files: rename; folders such as a SavedModel or an .mlpackage:
                     an atomic exchange, so a reader sees the old or the new folder, never a mix);
                     on failure nothing is left behind.
  locked_dir(dir)    an output folder locked (filelock) while one run writes into it: a second
                     run waits a bounded time, then refuses with one line.
  remove_stale_temps leftovers of killed runs (`.tmp-*` whose owner no longer holds its lock)
                     are removed by the next write into that folder.
  location_error     an OSError turned into the user's words: their path, never a temp path;
                     exit 2 for a bad location (a file in the way, read-only, no permission),
                     exit 1 for a disk that filled up during the write.
  write_text/bytes   small atomic writes (reports, plans).
  failed_name        where an artifact that failed validation is moved aside.

Every temp entry `.tmp-<pid>-<random>` comes with a lock file `.tmp-<pid>-<random>.lock` held
(fcntl lock, released by the kernel even on kill -9) for as long as its writer lives: "held by
a live process" is a lock another process can take, not a guess from ages or PIDs.
Pure Python (filelock); no TensorFlow.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
import threading
import time
from typing import Dict, List, Optional

from optkit.errors import RunFailure, UserError

TMP_PREFIX = ".tmp-"
LOCK_SUFFIX = ".lock"
FOLDER_LOCK = ".optkit.lock"
# How long a second run waits for a folder another run is writing into. Exports take seconds to
# minutes; waiting longer than a minute silently looks like a hang, so refuse and say why.
LOCK_WAIT_SECONDS = float(os.environ.get("OPTKIT_LOCK_WAIT", "60"))
# A temp lock file without its entry is young while its writer is between locking and mkdir;
# only older orphans are removed (a kill -9 leftover is minutes old by the next run).
_ORPHAN_LOCK_AGE = 60.0
_TMP_IN_TEXT = re.compile(r"[^\s'\"`(]*" + re.escape(os.sep + TMP_PREFIX) + r"[^\s'\"`),;]*")



class BadLocation(UserError):
    """The output location cannot take the artifact: a file in the way, read-only, no permission (exit 2)."""


class DiskFull(RunFailure):
    """The disk filled up while writing (exit 1); what was being written has been removed."""


_held: Dict[str, list] = {}        # folder -> [FileLock, depth]: a run may re-enter its own folder
_held_guard = threading.Lock()


# -- locations and their errors ------------------------------------------------------------------

def location_error(exc: BaseException, target: str) -> Optional[Exception]:
    """The user's version of a filesystem error met while writing `target`, or None if `exc`
    is not about the location (then the caller reports it as it would any other failure)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code is None:
        # TensorFlow's C++ writers raise their own errors; the OS reason is in the text.
        for name, marker in (("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system"),
                             ("EDQUOT", "Disk quota exceeded"), ("EACCES", "Permission denied")):
            if marker in text:
                code = getattr(errno, name)
                break
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DiskFull(f"disk full while writing {target}; nothing was left behind")
    if code == errno.EROFS:
        return BadLocation(f"cannot write {target}: {_blocked_folder(target)} is on a read-only file system")
    if code in (errno.EACCES, errno.EPERM):
        return BadLocation(f"cannot write {target}: permission denied in {_blocked_folder(target)}")
    if code in (errno.ENOTDIR, errno.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = _file_in_the_way(target)
        if blocker:
            return BadLocation(f"cannot write {target}: {blocker} is a file, not a folder")
    return None


def _file_in_the_way(target: str) -> Optional[str]:
    path = os.path.dirname(os.path.abspath(target))
    while path and path != os.path.dirname(path):
        if os.path.exists(path) and not os.path.isdir(path):
            return path
        path = os.path.dirname(path)
    return None


def _blocked_folder(target: str) -> str:
    path = os.path.dirname(os.path.abspath(target))
    while not os.path.isdir(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def user_words(text: str, target: str) -> str:
    """`text` with every temp path (`…/.tmp-…`) replaced by the user's `target`."""
    return _TMP_IN_TEXT.sub(lambda _: os.fspath(target), text)


def prepare_dir(path: str) -> str:
    """Create folder `path` (and parents); a location the user cannot write to is a UserError
    naming `path`. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise BadLocation(f"cannot write into {path}: it is a file, not a folder")
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            read_only = hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code), path)
    except OSError as exc:
        mapped = location_error(exc, os.path.join(path, "x"))
        if mapped is not None:
            raise type(mapped)(str(mapped).replace(os.path.join(path, "x"), path)) from None
        raise BadLocation(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return path


# -- temps, stale temps, staging ---------------------------------------------------------------

def _new_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _file_lock(path: str, timeout: float):
    from filelock import FileLock

    return FileLock(path, timeout=timeout)


def _try_lock(path: str):
    """The lock at `path` if nobody holds it (then its owner is gone), else None."""
    from filelock import Timeout

    lock = _file_lock(path, 0)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    except OSError:   # cannot even open it (read-only folder): leave it alone
        return None
    return lock


def remove_stale_temps(folder: str) -> List[str]:
    """Remove `.tmp-*` entries in `folder` whose writer is gone; returns what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    entries = [n for n in names if n.startswith(TMP_PREFIX) and not n.endswith(LOCK_SUFFIX)]
    for name in entries:
        path = os.path.join(folder, name)
        lock_path = path + LOCK_SUFFIX
        lock = None
        if os.path.exists(lock_path):
            lock = _try_lock(lock_path)
            if lock is None:
                continue      # its writer is alive
        remove(path)
        removed.append(path)
        if lock is not None:
            _unlink(lock_path)
            lock.release()
    now = time.time()
    for name in names:
        if not (name.startswith(TMP_PREFIX) and name.endswith(LOCK_SUFFIX)):
            continue
        lock_path = os.path.join(folder, name)
        if os.path.exists(lock_path[:-len(LOCK_SUFFIX)]):
            continue
        try:
            if now - os.path.getmtime(lock_path) < _ORPHAN_LOCK_AGE:
                continue
        except OSError:
            continue
        lock = _try_lock(lock_path)
        if lock is not None:
            _unlink(lock_path)
            lock.release()
            removed.append(lock_path)
    return removed


def remove(path: str) -> None:
    """Remove a file or a folder, quietly (used for temps and for artifacts that no longer match)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Staged:
    """What `staging()` yields: `path` to write (same basename as the target, inside a private
    temp folder next to it). Call `discard()` to drop the result instead of publishing it."""

    def __init__(self, path: str, folder: str):
        self.path = path
        self.folder = folder
        self.discarded = False

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path

    def discard(self):
        self.discarded = True


@contextlib.contextmanager
def staging(target: str, *, publish: bool = True):
    """Yield a Staged temp path for `target`; publish it at `target` if the block succeeds.

    The temp path keeps the target's basename (converters pick the format from the suffix:
    .mlpackage, .keras). On any exception the temp entry is removed and an OSError about the
    location is re-raised in the user's words (location_error). Stale temps of killed runs in
    the same folder are removed first.
    """
    target = os.path.abspath(os.fspath(target))
    parent = prepare_dir(os.path.dirname(target))
    remove_stale_temps(parent)
    token = _new_token()
    folder = os.path.join(parent, TMP_PREFIX + token)
    lock_path = folder + LOCK_SUFFIX
    lock = None
    try:
        lock = _file_lock(lock_path, 0)
        lock.acquire(timeout=0)
        os.mkdir(folder)
        staged = Staged(os.path.join(folder, os.path.basename(target)), folder)
        yield staged
        if publish and not staged.discarded:
            if not os.path.exists(staged.path):
                raise RuntimeError(f"the converter wrote nothing for {target}")
            replace(staged.path, target)
    except OSError as exc:
        mapped = location_error(exc, target)
        if mapped is not None:
            raise mapped from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            _unlink(lock_path)
            lock.release()


def replace(src: str, dst: str) -> None:
    """Move `src` to `dst` in one step. Files: os.replace. Folders over an existing folder:
    exchanged atomically (Linux renameat2 RENAME_EXCHANGE), then the old one is removed; where
    the exchange is not available, the old folder is renamed aside first (never merged, never
    half-deleted in place)."""
    if os.path.isdir(dst) and not os.path.islink(dst):
        if not _exchange(src, dst):
            aside = os.path.join(os.path.dirname(src), ".old")
            os.rename(dst, aside)
            os.rename(src, dst)
            src = aside
        remove(src)      # now the old version
    else:
        if os.path.isdir(src) and os.path.lexists(dst):
            os.unlink(dst)   # a file (or link) where a folder artifact goes
        os.replace(src, dst)


def _exchange(a: str, b: str) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else -1):
        return False   # old kernel or a filesystem without exchange: fall back
    raise OSError(code, os.strerror(code), b)


def failed_name(path: str, suffix: str = "") -> str:
    """model.onnx -> model.failed.onnx; model_saved_model -> model_saved_model.failed: never
    loadable by the name a deployment expects, still openable in a viewer."""
    path = os.fspath(path)
    if suffix.startswith(".") and path.endswith(suffix):
        return path[:-len(suffix)] + ".failed" + suffix
    return path + ".failed"


@contextlib.contextmanager
def atomic_output(target: str):
    """`staging()` yielding a plain path string (the exporters' contract)."""
    with staging(target) as staged:
        yield staged.path


def write_bytes(path: str, data: bytes) -> str:
    with staging(path) as staged:
        with open(staged.path, "wb") as fh:
            fh.write(data)
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


# -- folder locks --------------------------------------------------------------------------------

@contextlib.contextmanager
def locked_dir(folder: str, *, wait: Optional[float] = None):
    """Hold `folder`'s lock (created if needed) while the block writes into it.

    Another process holding it: wait up to `wait` seconds (default LOCK_WAIT_SECONDS), then a
    one-line UserError. The same process may nest locks on one folder. Stale temps are removed
    once the lock is held.
    """
    from filelock import Timeout

    created = not os.path.isdir(os.fspath(folder))
    folder = prepare_dir(folder)
    wait = LOCK_WAIT_SECONDS if wait is None else wait
    lock_path = os.path.join(folder, FOLDER_LOCK)
    with _held_guard:
        entry = _held.get(folder)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        lock = _file_lock(lock_path, wait)
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if wait > 0:
                    print(f"optkit: waiting up to {wait:.0f} s for {folder}: another optkit run is writing into it",
                          file=sys.stderr, flush=True)
                lock.acquire(timeout=wait)
        except Timeout:
            raise BadLocation(f"{folder} is in use by another optkit run (waited {wait:.0f} s); "
                              "try again when it finishes or choose another output folder") from None
        except OSError as exc:
            mapped = location_error(exc, folder)
            if mapped is not None:
                raise mapped from None
            raise
        with _held_guard:
            _held[folder] = [lock, 1]
        remove_stale_temps(folder)
    try:
        yield folder
    finally:
        with _held_guard:
            entry = _held[folder]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[folder]
        if last:
            # Unlinked before release: a waiter holding the old inode sees it unlinked and
            # re-opens the path (filelock >= 4 checks st_nlink), so no two runs ever hold it.
            _unlink(lock_path)
            entry[0].release()
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)   # only if empty: a run that wrote nothing leaves nothing
