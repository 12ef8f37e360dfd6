"""Remote bench over SSH against a REAL OpenSSH server started on 127.0.0.1 for these tests.

The server gets its own host key, config and authorized_keys in a temp dir; the client trusts it
only through a known_hosts file the fixture writes. The "remote" machine is this one, so the
remote Python can be the project's venv (it has onnxruntime), and the temp dir's removal can be
checked on the local file system.
"""
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from optkit import remote
from optkit.errors import RunFailure, UserError
from tiny_onnx import tiny_onnx

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

SSHD = "/usr/sbin/sshd"
# The Python running the tests is the project's venv (it has onnxruntime) wherever the checkout is
# (a git worktree has no .venv of its own).
VENV_PYTHON = sys.executable
# Spaces, both quote kinds, a shell variable and a command substitution: if any of it reached a
# shell unquoted, the runner would be handed a different path (or `id` would run) and fail.
HOSTILE_NAME = 'it\'s a "model" $HOME `id`.onnx'


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH client not installed")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text("\n".join([
        "ListenAddress 127.0.0.1",
        f"HostKey {d / 'host_key'}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PermitRootLogin yes", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "Subsystem sftp internal-sftp",   # OpenSSH >= 9 scp speaks SFTP
        "AcceptEnv TMPDIR",               # lets a test choose where the remote temp dir goes
        "LogLevel ERROR", "",
    ]))
    os.makedirs("/run/sshd", exist_ok=True)  # privilege-separation dir sshd insists on
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=log, stderr=log)
    deadline = time.time() + 15
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail("sshd exited: " + (d / "sshd.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("sshd did not start listening")
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    info = {"target": f"{getpass.getuser()}@127.0.0.1:{port}", "identity": str(d / "client_key"),
            "known_hosts": str(d / "known_hosts"), "dir": d, "port": port}
    yield info
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def hostile_model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("models") / HOSTILE_NAME)


def _bench(sshd, model, **kw):
    opts = dict(identity=sshd["identity"], known_hosts=sshd["known_hosts"], threads=1,
                warmup=2, min_time=0.05, min_runs=25, python=VENV_PYTHON)
    opts.update(kw)
    return remote.bench_remote([model], sshd["target"], **opts)


def test_copied_single_file_runner_benches_a_model_whose_name_has_quotes_and_dollars(sshd, hostile_model):
    seen = []
    doc = _bench(sshd, hostile_model, copy_runner=True, progress=seen.append)
    assert doc["schema"] == 1 and doc["env"]["runner"] == "copied single file"
    (res,) = doc["results"]
    assert res["path"] == hostile_model
    assert os.path.basename(res["remote_path"]) == HOSTILE_NAME
    assert res["runtime"] == "onnxruntime" and res["threads"] == 1 and res["format"] == "onnx"
    assert res["latency_ms"]["n"] == len(res["samples_ms"]) >= 25
    assert 0 < res["latency_ms"]["p50"] < 1000
    assert res["size_bytes"] == os.path.getsize(hostile_model)
    # The device fingerprint came from the remote side (here: this machine) and names the run.
    assert res["device"]["cpu_count"] == os.cpu_count() and res["device"]["threads"] == 1
    assert doc["env"]["device"]["cpu_model"]
    # The remote temp dir is gone afterwards (remote == local here, so we can look).
    assert not os.path.exists(os.path.dirname(res["remote_path"]))
    assert any("single-file runner" in m for m in seen)


def test_installed_optkit_is_used_when_the_remote_python_has_it(sshd, hostile_model):
    doc = _bench(sshd, hostile_model)
    assert doc["env"]["runner"] == "optkit installed remotely"
    assert doc["results"][0]["latency_ms"]["n"] >= 25


def test_two_artifacts_in_one_session_keep_their_own_paths(sshd, tmp_path):
    small = tiny_onnx(tmp_path / "small.onnx", hidden=8)
    big = tiny_onnx(tmp_path / "big model.onnx", hidden=512)
    doc = remote.bench_remote([small, big], sshd["target"], identity=sshd["identity"],
                              known_hosts=sshd["known_hosts"], threads=1, warmup=2, min_time=0.05,
                              min_runs=20, python=VENV_PYTHON)
    assert [r["path"] for r in doc["results"]] == [small, big]
    assert doc["results"][1]["size_bytes"] > 10 * doc["results"][0]["size_bytes"]


def test_unknown_host_key_is_refused(sshd, hostile_model, tmp_path):
    # A known_hosts that trusts some other key for this host: ssh must refuse, not prompt or accept.
    _keygen(tmp_path / "other")
    other = (tmp_path / "other.pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd['port']} {other[0]} {other[1]}\n")
    with pytest.raises(UserError, match="Host key verification failed|HOST IDENTIFICATION HAS CHANGED"):
        _bench(sshd, hostile_model, known_hosts=str(wrong))


def test_host_missing_from_known_hosts_is_refused(sshd, hostile_model, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(UserError, match="host-key checking is on"):
        _bench(sshd, hostile_model, known_hosts=str(empty))


def test_remote_python_without_numpy_fails_with_the_remote_reason_and_cleans_up(sshd, hostile_model, tmp_path):
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no system python3")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import numpy"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("system python3 has numpy; this test needs one without")
    remote_tmp = tmp_path / "remote_tmp"
    remote_tmp.mkdir()
    seen = []
    with pytest.raises(RunFailure, match="No module named 'numpy'"):
        _bench(sshd, hostile_model, python="/usr/bin/python3", progress=seen.append,
               ssh_options=[f"SetEnv=TMPDIR={remote_tmp}"])
    assert any(str(remote_tmp) + "/optkit." in m for m in seen)   # the temp dir was made there
    assert any("copying" in m for m in seen)                       # and used for the run
    assert list(remote_tmp.iterdir()) == []            # and the failed run left nothing behind


def test_missing_remote_python_is_a_user_error(sshd, hostile_model):
    with pytest.raises(UserError, match="remote python '/nonexistent/python3' not found"):
        _bench(sshd, hostile_model, python="/nonexistent/python3")


@pytest.mark.parametrize("text,dest,port", [
    ("pi@raspberrypi.local", "pi@raspberrypi.local", None),
    ("jetson:2222", "jetson", 2222),
    ("root@[::1]:22", "root@::1", 22),
])
def test_target_parsing(text, dest, port):
    t = remote.Target(text)
    assert (t.destination, t.port) == (dest, port)


@pytest.mark.parametrize("text", ["-oProxyCommand=touch x", "me@-evil", "a b@host", "host:99999", ""])
def test_targets_that_could_be_read_as_ssh_options_or_are_malformed_are_refused(text):
    with pytest.raises(UserError):
        remote.Target(text)


def test_ssh_argv_puts_options_before_a_double_dash_and_keeps_host_key_checking(tmp_path):
    kh = tmp_path / "known hosts %h"
    kh.write_text("")
    s = remote.SSHSession(remote.Target("me@host:2200"), known_hosts=str(kh),
                          ssh_options=["ProxyJump=bastion"])
    argv = s.ssh_argv("echo hi")
    assert argv[-3:] == ["--", "me@host", "echo hi"]
    assert "StrictHostKeyChecking=yes" in argv and "BatchMode=yes" in argv
    assert argv.index("ProxyJump=bastion") < argv.index("StrictHostKeyChecking=yes")
    assert f'UserKnownHostsFile="{tmp_path}/known hosts %%h"' in argv
    assert argv[argv.index("-p") + 1] == "2200"


def test_ssh_options_must_be_key_value():
    with pytest.raises(UserError, match="Key=Value"):
        remote.SSHSession(remote.Target("host"), ssh_options=["-v"])
