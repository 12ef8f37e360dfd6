"""What reaches the user's terminal: optkit's own lines and one progress display, nothing else.

TensorFlow, its converters and Keras write to stderr on their own: C++ log lines
(`I0000 ... oneDNN custom operations are on`, `E0000 ... failed call to cuInit`), absl's
`WARNING: All log messages before absl::InitializeLog()`, the TFLite quantizer's
`fully_quantize: 0, inference_type: 6, ...`, Python warnings and `WARNING:tensorflow:` logging.
The C++ lines are written to file descriptor 2 directly, below Python, and child processes
(converters, probes, benchmark runners) inherit that descriptor; so the filter sits at the
descriptor: fd 2 becomes a pipe, a thread reads it and forwards every line that is not noise to
the real stderr. Python's own `sys.stderr` writes through the same pipe, so one rule covers
everything. OPTKIT_DEBUG=1 turns the filter off.

Progress: `bar()` opens a tqdm bar on stderr only when its stage starts; tqdm places a bar opened
while another is open on the next free line, so an outer stage bar and the epoch bars of a
fine-tune inside it stack instead of overwriting each other. `log()` prints a line above the bars.
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import threading
from typing import Optional

DEBUG_ENV = "OPTKIT_DEBUG"

# Lines nobody running optkit can act on. Matched per line (or per carriage-return segment).
NOISE = re.compile(
    rb"^\s*[IWEF]\d{4} "          # absl/glog C++ records: I0000 00:00:... file.cc:12] ...
    rb"|absl::"                   # WARNING: All log messages before absl::InitializeLog() ...
    rb"|cuInit"                   # CUDA probing on a machine without a GPU
    rb"|fully_quantize"           # the TFLite quantizer's parameter dump
    rb"|Warning:|WARNING:"        # Python warnings, WARNING:tensorflow:/absl: logging, Keras/HDF5 nags
    rb"|^INFO: Created TensorFlow Lite"   # LiteRT's delegate announcement, once per interpreter
)
# A Python warning is two lines: `file.py:12: UserWarning: text` and the indented source line.
CONTINUATION = re.compile(rb"^[ \t]+\S")
# How long a partial line (a progress bar's `\r...` update) may wait for the rest of its line.
PARTIAL_WAIT_S = 0.05


def debug() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def is_noise(line: bytes) -> bool:
    # optkit's own lines always pass, even when they quote a library's "Warning:" in a reason.
    return not line.lstrip(b"\r").startswith(b"optkit:") and bool(NOISE.search(line))


class LineFilter:
    """Splits a byte stream into lines (and `\\r` segments) and drops the noise ones.

    Feed it chunks as they arrive; it returns the bytes to forward. A Python warning's indented
    source line is dropped with the warning."""

    def __init__(self):
        self.pending = b""
        self.forwarding_partial = False   # part of the current line went out already: send the rest
        self.dropped_previous = False

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        out = []
        while True:
            cut = _first_break(self.pending)
            if cut < 0:
                break
            segment, self.pending = self.pending[:cut + 1], self.pending[cut + 1:]
            out.append(self._decide(segment))
        return b"".join(out)

    def flush_partial(self) -> bytes:
        """Nothing more arrived: let a partial line through unless it already looks like noise."""
        if not self.pending or (not self.forwarding_partial and is_noise(self.pending)):
            return b""
        text, self.pending = self.pending, b""
        self.forwarding_partial = True
        return text

    def finish(self) -> bytes:
        text, self.pending = self.pending, b""
        return b"" if not text else self._decide(text)

    def _decide(self, segment: bytes) -> bytes:
        if self.forwarding_partial:
            # The rest of a line whose start went out already (a progress bar): a C++ record
            # written right after the bar lands here, so it is still checked.
            self.forwarding_partial = not segment.endswith((b"\n", b"\r"))
            return b"" if is_noise(segment.rstrip(b"\r\n")) else segment
        body = segment.rstrip(b"\r\n")
        drop = is_noise(body) or (self.dropped_previous and bool(CONTINUATION.match(body)))
        if segment.endswith(b"\n") or body:
            self.dropped_previous = drop
        return b"" if drop else segment


_BREAK = re.compile(rb"\r\n|\n|\r")


def _first_break(data: bytes) -> int:
    """Index of the last byte of the first line end ("\r\n" is one), -1 when there is none."""
    found = _BREAK.search(data)
    return -1 if found is None else found.end() - 1


class _Pump(threading.Thread):
    def __init__(self, read_fd: int, write_fd: int):
        super().__init__(name="optkit-stderr-filter", daemon=True)
        self.read_fd, self.write_fd = read_fd, write_fd
        self.filter = LineFilter()

    def run(self):
        while True:
            ready, _, _ = select.select([self.read_fd], [], [], PARTIAL_WAIT_S)
            if not ready:
                self._write(self.filter.flush_partial())
                continue
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._write(self.filter.finish())
                return
            self._write(self.filter.feed(chunk))

    def _write(self, data: bytes):
        while data:
            try:
                data = data[os.write(self.write_fd, data):]
            except OSError:
                return


@contextlib.contextmanager
def filtered_stderr():
    """Route fd 2 (this process and its children) through the noise filter for the block.

    A no-op with OPTKIT_DEBUG=1 or when fd 2 cannot be duplicated (some notebook front-ends)."""
    if debug():
        yield
        return
    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = _Pump(read_fd, terminal)
    pump.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(terminal, 2)      # closes this process's write end of the pipe
        # A child still holding the pipe keeps the pump reading (and writing to `terminal`);
        # don't wait on it for long, and leave its descriptors open while it runs.
        pump.join(timeout=1.0)
        if not pump.is_alive():
            os.close(read_fd)
            os.close(terminal)


def child_env(env: Optional[dict] = None) -> dict:
    """Environment for a child Python/TensorFlow process: TF's C++ INFO/WARNING lines off unless
    the user chose a level or asked for debugging (the fd filter catches what is left)."""
    env = dict(os.environ if env is None else env)
    if not env.get(DEBUG_ENV):
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


# ------------------------------------------------------------------------------ progress display

def log(message: str) -> None:
    """`optkit: message` on stderr, above any progress bar."""
    text = f"optkit: {message}"
    try:
        from tqdm import tqdm
    except ImportError:
        print(text, file=sys.stderr, flush=True)
        return
    tqdm.write(text, file=sys.stderr)


def write(line: str) -> None:
    """A line on stderr (no `optkit:` prefix) that does not break an active bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, file=sys.stderr, flush=True)
        return
    tqdm.write(line, file=sys.stderr)


def bar(total: Optional[int], desc: str, *, unit: str = "it", enabled: bool = True, leave: bool = False,
        initial: int = 0):
    """A tqdm bar on stderr (stdout holds the table or --json), or None (disabled, no tqdm).

    Open it when its stage starts, close it when the stage ends: tqdm stacks a bar opened while
    another is open on the line below, so nested stages read top-down."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=leave, dynamic_ncols=True,
                initial=initial)
