"""optkit.files: atomic publishing, folder locks, stale temps of killed runs, and location errors
in the user's words (issue #17). Real processes, real locks, real (tmpfs) file systems; no TF."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from optkit import files
from optkit.errors import RunFailure, UserError

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@contextlib.contextmanager
def _tmpfs(path, options):
    """A real small or read-only file system (needs root to mount; skipped otherwise)."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_staging_publishes_a_file_only_on_success(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with files.staging(target) as staged:
            assert os.path.basename(staged.path) == "m.onnx" and ".tmp-" in staged.path
            open(staged.path, "w").write("half")
            raise RuntimeError("converter crashed")
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["m.onnx"]
    with files.staging(target) as staged:
        open(staged.path, "w").write("new")
    assert target.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_a_folder_artifact_is_swapped_whole(tmp_path):
    target = tmp_path / "m_saved_model"
    target.mkdir()
    (target / "variables.old").write_text("old")
    with files.staging(target) as staged:
        os.makedirs(staged.path)
        open(os.path.join(staged.path, "saved_model.pb"), "w").write("new")
    assert sorted(os.listdir(target)) == ["saved_model.pb"]
    assert sorted(os.listdir(tmp_path)) == ["m_saved_model"]


def test_leftovers_of_a_killed_run_go_and_a_live_runs_temps_stay(tmp_path):
    # Written the way optkit wrote before locks existed (issue #17's kill -9 leftovers).
    legacy = tmp_path / ".tmp-4_aft__w"
    legacy.mkdir()
    (legacy / "artifact.onnx").write_bytes(b"partial")
    code = f"""
        import time
        from optkit import files
        with files.staging({str(tmp_path / 'm.onnx')!r}) as staged:
            open(staged.path, 'wb').write(b'partial')
            print(staged.folder, flush=True)
            time.sleep(60)
    """
    killed, alive = _python(code), _python(code)
    killed_tmp, alive_tmp = killed.stdout.readline().strip(), alive.stdout.readline().strip()
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert os.path.isdir(killed_tmp)
        with files.staging(tmp_path / "other.tflite") as staged:
            open(staged.path, "w").write("ok")
        left = sorted(os.listdir(tmp_path))
        assert not legacy.exists() and not os.path.exists(killed_tmp)
        assert os.path.isdir(alive_tmp), "a live run's temp folder was removed"
        assert left == sorted(["other.tflite", os.path.basename(alive_tmp), os.path.basename(alive_tmp) + ".lock"])
    finally:
        alive.kill()
        alive.wait()


def test_a_second_run_into_a_locked_folder_waits_then_refuses_with_one_line(tmp_path):
    holder = _python(f"""
        import time
        from optkit import files
        with files.locked_dir({str(tmp_path)!r}):
            print('locked', flush=True)
            time.sleep(60)
    """)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match="in use by another optkit run") as info:
            with files.locked_dir(tmp_path, wait=0.5):
                pass
        assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    with files.locked_dir(tmp_path, wait=5):      # free again once its holder is gone
        with files.locked_dir(tmp_path, wait=0):  # and a run may re-enter its own folder
            pass
    assert os.listdir(tmp_path) == []              # the lock file goes with the lock


def test_an_output_folder_under_a_file_is_a_bad_location_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "out" / "m.onnx"
    with pytest.raises(UserError) as info:
        with files.staging(target):
            pass
    message = str(info.value)
    assert str(tmp_path / "notes.txt" / "out") in message and "is a file" in message and ".tmp-" not in message
    with pytest.raises(UserError, match="is a file"):
        with files.locked_dir(tmp_path / "notes.txt"):
            pass


def test_read_only_folder_is_a_bad_location(tmp_path):
    if os.geteuid() == 0:
        context = _tmpfs(tmp_path / "ro", "ro,size=1m")
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    with context as folder:
        with pytest.raises(UserError, match=r"cannot write .*(read-only|permission denied)") as info:
            with files.staging(folder / "m.tflite") as staged:
                open(staged.path, "w").write("x")
        assert str(folder) in str(info.value) and ".tmp-" not in str(info.value)
        assert os.listdir(folder) == []


def test_disk_full_during_a_write_is_exit_1_and_leaves_nothing(tmp_path):
    with _tmpfs(tmp_path / "small", "size=64k") as folder:
        with pytest.raises(RunFailure, match="disk full while writing") as info:
            with files.staging(folder / "m.onnx") as staged:
                with open(staged.path, "wb") as fh:
                    fh.write(b"\0" * (1 << 20))
        assert str(folder / "m.onnx") in str(info.value) and ".tmp-" not in str(info.value)
        assert info.value.exit_code == 1
        assert os.listdir(folder) == []


def test_temp_paths_in_messages_become_the_users_path():
    text = "[Errno 30] Read-only file system: '/out/.tmp-4_aft__w/.tmp-1-ab/artifact.onnx'"
    assert files.user_words(text, "/out/m.onnx") == "[Errno 30] Read-only file system: '/out/m.onnx'"


def test_failed_artifacts_are_renamed_so_nothing_loads_them_by_their_name():
    assert files.failed_name("out/m.onnx", ".onnx") == "out/m.failed.onnx"
    assert files.failed_name("out/m.mlpackage", ".mlpackage") == "out/m.failed.mlpackage"
    assert files.failed_name("out/m_saved_model", "_saved_model") == "out/m_saved_model.failed"
