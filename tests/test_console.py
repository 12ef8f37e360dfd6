"""optkit.console: stderr keeps optkit's lines and progress bars, not TensorFlow's or converters' noise."""
import subprocess
import sys
import textwrap

import pytest

from optkit import console

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

NOISE_LINES = [
    b"I0000 00:00:1700000000.123 4242 cpu_feature_guard.cc:210] oneDNN custom operations are on.\n",
    b"E0000 00:00:1700000000.456 4242 cuda_executor.cc:1309] failed call to cuInit: UNKNOWN ERROR (303)\n",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8\n",
    b"WARNING:absl:Compiled the loaded model, but the compiled metrics have yet to be built.\n",
    b"/venv/h5py/_hl/base.py:12: UserWarning: You are saving your model as an HDF5 file\n",
    b"  saving_api.save_model(\n",
]


def test_line_filter_drops_noise_and_a_warnings_source_line_and_keeps_the_rest():
    f = console.LineFilter()
    kept = f.feed(b"optkit: training\n" + b"".join(NOISE_LINES) + b"  indented but after a kept line\n")
    assert kept == b"optkit: training\n"   # the indented line follows a dropped warning line
    assert f.feed(b"optkit: done\n  detail of a kept line\n") == b"optkit: done\n  detail of a kept line\n"
    assert f.feed(b"optkit: step qat failed: UserWarning: x\n") == b"optkit: step qat failed: UserWarning: x\n"


def test_progress_bar_updates_pass_through_without_waiting_for_a_newline():
    f = console.LineFilter()
    assert f.feed(b"\repoch 1/3:  40%|####") == b"\r"
    assert f.flush_partial() == b"epoch 1/3:  40%|####"
    assert f.feed(b"\repoch 1/3: 100%|##########|\n") == b"\repoch 1/3: 100%|##########|\n"
    # A partial line that already looks like noise waits for its end, then goes.
    assert f.feed(b"W0000 00:00 partial") == b"" and f.flush_partial() == b""
    assert f.feed(b" rest\nkept\n") == b"kept\n"
    # A C++ record written right after a bar's partial line is still dropped.
    assert f.feed(b"\rexport:  50%|#####") == b"\r" and f.flush_partial() == b"export:  50%|#####"
    assert f.feed(b"fully_quantize: 0, inference_type: 6\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n") == b""


def test_filter_covers_direct_fd_writes_python_writes_and_child_processes():
    script = textwrap.dedent("""
        import os, subprocess, sys, warnings
        from optkit import console
        with console.filtered_stderr():
            os.write(2, b"I0000 00:00:17.1 1 cpu_feature_guard.cc:210] oneDNN custom operations are on\\n")
            print("optkit: kept", file=sys.stderr)
            warnings.warn("legacy HDF5")
            subprocess.run([sys.executable, "-c",
                            "import os; os.write(2, b'E0000 failed call to cuInit: x\\\\nchild kept\\\\n')"])
            print("last", file=sys.stderr)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert run.returncode == 0
    assert run.stderr.decode().splitlines() == ["optkit: kept", "child kept", "last"]
    debug = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                           env=dict(console.child_env(), OPTKIT_DEBUG="1"))
    assert b"cuInit" in debug.stderr and b"UserWarning" in debug.stderr
