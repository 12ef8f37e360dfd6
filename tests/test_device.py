"""Device fingerprint: read from /proc and /sys trees (built here for boards we do not have),
and the edge modules' promises: TensorFlow-free, importable on the Python 3.8 of Jetson images."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from optkit import device

pytestmark = pytest.mark.unit   # needs no TensorFlow: `make test-unit` runs it with TF unimportable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EDGE_MODULES = ("optkit.gate", "optkit.remote", "optkit.adb", "optkit.device")


def write(root, path, text):
    full = root / path.lstrip("/")
    full.parent.mkdir(parents=True, exist_ok=True)
    full.write_text(text)


def jetson_tree(root, pinned):
    write(root, "/etc/nv_tegra_release", "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    write(root, "/proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(root, "/proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\n")
    for i in range(4):
        base = f"/sys/devices/system/cpu/cpu{i}"
        write(root, base + "/online", "0\n" if i == 3 else "1\n")
        write(root, base + "/cpufreq/scaling_governor", "schedutil\n")
        write(root, base + "/cpufreq/scaling_max_freq", "1510400\n")
        write(root, base + "/cpufreq/scaling_min_freq", "1510400\n" if pinned or i == 3 else "729600\n")
        write(root, base + "/cpufreq/scaling_cur_freq", "1510400\n")
        write(root, base + "/cpufreq/cpuinfo_max_freq", "1510400\n")


def test_jetson_board_name_governor_and_pinned_clocks(tmp_path):
    jetson_tree(tmp_path, pinned=True)
    fp = device.fingerprint(threads=4, runtime="litert", delegate="xnnpack", root=str(tmp_path))
    assert fp["cpu_model"] == fp["board"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert fp["cpufreq"] == {"governor": "schedutil", "cur_khz": 1510400, "min_khz": 1510400,
                             "max_khz": 1510400, "hw_max_khz": 1510400}
    assert fp["jetson"]["jetson_clocks"] == "on"
    assert fp["jetson"]["l4t"].startswith("# R35 (release), REVISION: 4.1")
    assert (fp["threads"], fp["runtime"], fp["delegate"]) == (4, "litert", "xnnpack")


def test_jetson_clocks_off_when_an_online_cpu_can_scale_down(tmp_path):
    jetson_tree(tmp_path, pinned=False)
    assert device.jetson_clocks_state(str(tmp_path)) == "off"


def test_offline_cpus_do_not_count_for_jetson_clocks(tmp_path):
    jetson_tree(tmp_path, pinned=True)
    write(tmp_path, "/sys/devices/system/cpu/cpu3/cpufreq/scaling_min_freq", "115200\n")  # offline core
    assert device.jetson_clocks_state(str(tmp_path)) == "on"


def test_raspberry_pi_cpuinfo_model_and_powersave_governor(tmp_path):
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\n"
          "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n")
    fp = device.fingerprint(root=str(tmp_path))
    assert fp["cpu_model"] == "ARMv7 Processor rev 3 (v7l)"
    assert fp["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert fp["cpufreq"] == {"governor": "powersave"}
    assert "jetson" not in fp


def test_arm_board_without_model_name_falls_back_to_hardware(tmp_path):
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nHardware\t: Qualcomm Technologies, Inc SM8250\n")
    assert device.cpu_model(str(tmp_path)) == "Qualcomm Technologies, Inc SM8250"


@pytest.mark.parametrize("text,expected", [
    ("NV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
    ("NV Power Mode: 5W\n1\nNVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13\n",
     {"name": "5W", "id": 1}),
    ("NVPM ERROR: failed to read PARAM EMC\n", None),
])
def test_nvpmodel_query_output(text, expected):
    assert device.parse_nvpmodel(text) == expected


def test_this_machine_fingerprint_is_json_and_names_its_cores():
    fp = device.fingerprint(threads=1)
    assert fp["cpu_count"] == os.cpu_count() and fp["threads"] == 1
    assert fp["cpu_model"]
    json.dumps(fp)


def test_edge_modules_import_without_tensorflow():
    code = ("import sys\nimport " + ", ".join(EDGE_MODULES + ("optkit.commands.gate",))
            + "\nbad = [m for m in ('tensorflow', 'keras', 'tf_keras', 'scipy') if m in sys.modules]"
            + "\nprint(bad)\nsys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _python38():
    for candidate in ("python3.8", os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8")):
        exe = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if exe and subprocess.run([exe, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                                  capture_output=True).returncode == 0:
            return exe
    return None


def test_edge_modules_import_and_the_probe_runs_on_python_38():
    exe = _python38()
    if exe is None:
        pytest.skip("no Python 3.8 interpreter here")
    proc = subprocess.run([exe, "-c", "import " + ", ".join(EDGE_MODULES)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    # The remote side runs the file on its own, as optkit.remote does with a copied device.py.
    with open(os.path.join(ROOT, "optkit", "device.py")) as fh:
        proc = subprocess.run([exe, "-"], stdin=fh, capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["python"].startswith("3.8.")
