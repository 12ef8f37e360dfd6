"""Benchmark on another machine over SSH: `optkit bench ARTIFACT --remote user@host[:port]`.

Uses the system OpenSSH client (`ssh`, `scp`): it is on every Jetson, Pi and CI runner, honours
the user's ~/.ssh/config (ProxyJump, agents, keys) and is maintained by people who do nothing
else. Per remote run:

  1. one ssh call makes a private temp dir (`mktemp -d`) and asks whether the remote Python can
     `import optkit.runner`;
  2. scp copies the artifacts into that dir - plus the single-file runner (optkit/runner.py) and
     the device probe (optkit/device.py) when optkit is absent there;
  3. one ssh call per artifact runs the runner with the remote Python and prints its JSON;
  4. the temp dir is removed, whatever happened.

Safety: host-key checking is ON (StrictHostKeyChecking=yes, BatchMode=yes: never a prompt, never
a silently trusted key); `known_hosts` points ssh at a file of trusted keys. Locally everything is
an argv list (no shell). The remote command line is the one place a shell parses our text, so
every variable part of it goes through shlex.quote. Files are copied into a directory target,
so scp takes the remote file name from the protocol, never from a remote shell.

TensorFlow-free; Python 3.8 compatible.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from optkit.errors import RunFailure, UserError

_HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER_FILE = os.path.join(_HERE, "runner.py")
DEVICE_FILE = os.path.join(_HERE, "device.py")
# What `mktemp -d` may legitimately return; anything else is never passed to `rm -rf`.
_SAFE_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]+/optkit\.[A-Za-z0-9]+$")
_MARK_OPTKIT = "optkit-present"
_MARK_NO_OPTKIT = "optkit-absent"


class Target(object):
    """`user@host[:port]`, `host`, `user@[::1]:2222`."""

    def __init__(self, text):
        self.text = text
        m = re.fullmatch(r"(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<host>[^@:\s\[\]]+))"
                         r"(?::(?P<port>\d{1,5}))?", text or "")
        if not m:
            raise UserError(f"bad --remote target {text!r}: expected user@host[:port]")
        self.user = m.group("user")
        self.host = m.group("v6") or m.group("host")
        self.port = int(m.group("port")) if m.group("port") else None
        # A host or user starting with '-' would be read by ssh as an option (e.g. -oProxyCommand=...).
        if self.host.startswith("-") or (self.user or "").startswith("-"):
            raise UserError(f"bad --remote target {text!r}: host and user cannot start with '-'")
        if self.port is not None and not 0 < self.port < 65536:
            raise UserError(f"bad --remote port {self.port}")

    @property
    def destination(self):
        return f"{self.user}@{self.host}" if self.user else self.host

    def scp_prefix(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host


def _ssh_path_value(path):
    """A path as ssh's config parser reads it: tokens like %h expand, so '%' is doubled, and
    whitespace needs double quotes (a double quote itself cannot be expressed)."""
    path = os.path.abspath(os.path.expanduser(path))
    if '"' in path:
        raise UserError(f"ssh cannot take a path containing a double quote: {path}")
    path = path.replace("%", "%%")
    return f'"{path}"' if re.search(r"\s", path) else path


def _normalise_options(ssh_options) -> List[str]:
    """ssh_options: 'Key=Value' strings (or '-o', 'Key=Value' pairs) -> ['-o', 'Key=Value', ...]."""
    out, items = [], list(ssh_options or ())
    i = 0
    while i < len(items):
        item = str(items[i])
        if item == "-o" and i + 1 < len(items):
            item = str(items[i + 1])
            i += 1
        elif item.startswith("-o") and len(item) > 2:
            item = item[2:]
        key = item.split("=", 1)[0]
        if item.startswith("-") or "=" not in item or not key or re.search(r"\s", key):
            raise UserError(f"ssh option {item!r}: give options as Key=Value (they become -o Key=Value)")
        out += ["-o", item]
        i += 1
    return out


class SSHSession(object):
    """argv builders and runners for ssh/scp against one target (no shell on this side)."""

    def __init__(self, target: Target, identity=None, known_hosts=None, ssh_options=(),
                 connect_timeout=15):
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise UserError(f"'{tool}' not found: install the OpenSSH client (e.g. apt-get install openssh-client)")
        if identity is not None and not os.path.isfile(identity):
            raise UserError(f"no such identity file: {identity}")
        if known_hosts is not None and not os.path.isfile(known_hosts):
            raise UserError(f"no such known_hosts file: {known_hosts}")
        self.target = target
        # The user's own -o options come first: for ssh the first value given for a key wins,
        # so an explicit choice (e.g. a ProxyJump) beats our defaults.
        opts = _normalise_options(ssh_options)
        opts += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"ConnectTimeout={int(connect_timeout)}", "-o", "LogLevel=ERROR"]
        if known_hosts is not None:
            opts += ["-o", "UserKnownHostsFile=" + _ssh_path_value(known_hosts),
                     "-o", "GlobalKnownHostsFile=/dev/null"]
        if identity is not None:
            opts += ["-o", "IdentitiesOnly=yes", "-i", os.path.abspath(identity).replace("%", "%%")]
        self.common = opts

    def _port(self, flag):
        return [flag, str(self.target.port)] if self.target.port else []

    def ssh_argv(self, remote_command: str) -> List[str]:
        # '--' ends ssh's options: the destination and command are never parsed as flags.
        return ["ssh"] + self.common + self._port("-p") + ["--", self.target.destination, remote_command]

    def scp_argv(self, local_paths: Sequence[str], remote_dir: str) -> List[str]:
        # A directory target with a trailing '/': the remote names come from the local basenames.
        dest = f"{self.target.scp_prefix()}:{shlex.quote(remote_dir.rstrip('/') + '/')}"
        return ["scp", "-q", "-B"] + self.common + self._port("-P") + ["--"] + list(local_paths) + [dest]

    def run(self, argv, timeout, what) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailure(f"{what} on {self.target.text} timed out after {timeout:.0f} s") from None
        if proc.returncode == 255:  # ssh's own failure: connection, authentication, host key
            raise UserError(f"{what}: ssh to {self.target.text} failed: {_last_line(proc.stderr)}"
                            + _host_key_hint(proc.stderr))
        return proc

    def shell(self, command: str, timeout: float, what: str) -> subprocess.CompletedProcess:
        return self.run(self.ssh_argv(command), timeout, what)


def _last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def _host_key_hint(stderr):
    if "Host key verification failed" in (stderr or "") or "No ED25519 host key is known" in (stderr or ""):
        return (" (host-key checking is on: add the host's key to known_hosts, e.g. "
                "`ssh-keyscan -p PORT HOST >> FILE` after checking its fingerprint, and pass --known-hosts FILE)")
    return ""


def _prepare_command(python):
    py = shlex.quote(python)
    return ('d=$(mktemp -d "${TMPDIR:-/tmp}/optkit.XXXXXXXX") || exit 97; printf "%s\\n" "$d"; '
            f"command -v {py} >/dev/null 2>&1 || {{ echo no-python; exit 0; }}; "
            f"if {py} -c 'import optkit.runner, optkit.device' >/dev/null 2>&1; "
            f"then echo {_MARK_OPTKIT}; else echo {_MARK_NO_OPTKIT}; fi")


def bench_remote(artifacts: Union[str, Sequence[str]], target: str, *, threads=None, batch=1,
                 warmup=10, min_time=1.0, min_runs=50, runtime=None, identity=None, known_hosts=None,
                 ssh_options=(), python="python3", copy_runner: Optional[bool] = None,
                 timeout: Optional[float] = None,
                 progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Bench artifacts on `target` with its own Python; returns bench JSON (DESIGN.md shape).

    `copy_runner`: None = copy runner.py/device.py only when the remote Python cannot import
    optkit; True = always use the copied single file; False = require optkit there.
    Each result keeps the local `path` and adds `remote_path`, `remote` and `device` (the
    remote fingerprint); `env` is the remote runner's environment plus `device` and `remote`.
    """
    say = progress or (lambda msg: None)
    paths = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts)
    if not paths:
        raise UserError("no artifact to benchmark")
    for p in paths:
        if not os.path.isfile(p):
            raise UserError(f"no such artifact: {p}")
    names = [os.path.basename(os.fspath(p)) for p in paths]
    if len(set(names)) != len(names):
        raise UserError("remote bench copies artifacts into one directory: their file names must differ")
    tgt = Target(target)
    session = SSHSession(tgt, identity=identity, known_hosts=known_hosts, ssh_options=ssh_options)
    per_run = float(timeout) if timeout else 120.0 + 4 * float(min_time)

    say(f"remote: preparing a temp dir on {tgt.text}")
    proc = session.shell(_prepare_command(python), 60, "preparing the remote temp dir")
    lines = proc.stdout.split()
    if proc.returncode != 0 or not lines or not _SAFE_REMOTE_DIR.match(lines[0]):
        raise RunFailure(f"could not create a temp dir on {tgt.text}: {_last_line(proc.stderr or proc.stdout)}")
    remote_dir = lines[0]
    say(f"remote: working in {tgt.text}:{remote_dir}")
    try:
        if "no-python" in lines[1:]:
            raise UserError(f"remote python {python!r} not found on {tgt.text} (pass --remote-python)")
        has_optkit = _MARK_OPTKIT in lines[1:]
        use_copy = (not has_optkit) if copy_runner is None else bool(copy_runner)
        if copy_runner is False and not has_optkit:
            raise UserError(f"optkit is not importable by {python} on {tgt.text}")
        to_copy = [os.fspath(p) for p in paths] + ([RUNNER_FILE, DEVICE_FILE] if use_copy else [])
        say(f"remote: copying {len(paths)} artifact(s){' and the single-file runner' if use_copy else ''}")
        proc = session.run(session.scp_argv(to_copy, remote_dir), per_run, "copying files")
        if proc.returncode != 0:
            raise RunFailure(f"scp to {tgt.text} failed: {_last_line(proc.stderr)}")

        py = shlex.quote(python)
        if use_copy:
            runner_cmd = f"{py} {shlex.quote(remote_dir + '/runner.py')}"
            device_cmd = f"{py} {shlex.quote(remote_dir + '/device.py')}"
        else:
            runner_cmd, device_cmd = f"{py} -m optkit.runner", f"{py} -m optkit.device"
        proc = session.shell(device_cmd, 60, "reading the device fingerprint")
        device = _parse_json_line(proc.stdout) if proc.returncode == 0 else None

        results, env = [], None
        for local, name in zip(paths, names):
            remote_path = remote_dir + "/" + name
            args = [remote_path, "--json", "--batch", str(int(batch)), "--warmup", str(int(warmup)),
                    "--min-time", str(float(min_time)), "--min-runs", str(int(min_runs))]
            if threads is not None:
                args += ["--threads", str(int(threads))]
            if runtime is not None:
                args += ["--runtime", str(runtime)]
            command = f"cd {shlex.quote(remote_dir)} && {runner_cmd} " + " ".join(shlex.quote(a) for a in args)
            say(f"remote: benchmarking {name} on {tgt.text}")
            proc = session.shell(command, per_run, f"benchmarking {name}")
            if proc.returncode != 0:
                msg = _last_line(proc.stderr)
                err = UserError if proc.returncode == 2 else RunFailure
                raise err(f"remote runner failed on {tgt.text} for {name} (exit {proc.returncode}): {msg}")
            result = _parse_json_line(proc.stdout)
            if result is None:
                raise RunFailure(f"remote runner on {tgt.text} printed no JSON for {name}")
            run_env = result.pop("env", None) or {}
            env = env or dict(run_env)
            result.update({"path": os.fspath(local), "remote_path": remote_path, "remote": tgt.text,
                           "device": _with_run_settings(device, result)})
            results.append(result)
        env = dict(env or {})
        env.update({"remote": tgt.text, "remote_python": python,
                    "runner": "copied single file" if use_copy else "optkit installed remotely"})
        if device:
            env["device"] = device
        return {"schema": 1, "env": env, "results": results}
    finally:
        _cleanup(session, remote_dir)


def _with_run_settings(device, result):
    if not device:
        return None
    fp = dict(device)
    fp.update({k: result[k] for k in ("threads", "runtime", "backend") if result.get(k) is not None})
    return fp


def _parse_json_line(stdout) -> Optional[Dict[str, Any]]:
    """The last stdout line that is a JSON object (anything a runtime logged before is ignored)."""
    for line in reversed((stdout or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _cleanup(session: SSHSession, remote_dir: str):
    if not _SAFE_REMOTE_DIR.match(remote_dir):
        return
    try:
        session.shell(f"rm -rf -- {shlex.quote(remote_dir)}", 60, "removing the remote temp dir")
    except (UserError, RunFailure):
        pass  # the connection is gone; nothing more we can do from here
