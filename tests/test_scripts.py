"""The README's two commands, scripts/demo.sh and scripts/test.sh, say what they do.

Each script runs here in a sandbox: a copy of scripts/ beside a fake ``.venv``
whose ``python`` and ``mmf-stream`` only record how they were called, and a
``PATH`` holding only the tools the scripts use (``apt-get`` and ``id`` are
fakes too). So nothing is installed, and the test checks the lines each step
prints, their order, and that missing Debian packages are installed by one
``apt-get install``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
BASH = shutil.which("bash")

#: a fake command: appends its name and arguments to $CALLS, exits 0
_RECORDER = """#!{bash}
echo "{name} $*" >> "$CALLS"
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _sandbox(tmp_path: Path, *, uid: int, present: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
    """A tree with scripts/ and a fake .venv, and the environment to run a script in it."""
    tree = tmp_path / "tree"
    shutil.copytree(SCRIPTS, tree / "scripts")
    venv = tree / ".venv" / "bin"
    venv.mkdir(parents=True)
    for name in ("python", "mmf-stream"):
        _executable(venv / name, _RECORDER.format(bash=BASH, name=name))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):  # the external tools the scripts use; everything else is a bash builtin
        os.symlink(shutil.which(tool), bin_dir / tool)
    _executable(bin_dir / "id", f"#!{BASH}\necho {uid}\n")
    for name in ("apt-get", *present):
        _executable(bin_dir / name, _RECORDER.format(bash=BASH, name=name))
    env = {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls.txt"), "HOME": str(tmp_path)}
    return tree, env


def _run(tree: Path, env: dict[str, str], script: str, *args: str) -> tuple[list[str], list[str]]:
    result = subprocess.run([BASH, str(tree / "scripts" / script), *args], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = Path(env["CALLS"]).read_text().splitlines()
    return result.stderr.splitlines(), calls


@pytest.mark.parametrize("script", ["demo.sh", "test.sh", "lib.sh"])
def test_scripts_parse(script):
    result = subprocess.run([BASH, "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_test_sh_says_each_step_and_installs_debian_packages_in_one_apt_get(tmp_path):
    tree, env = _sandbox(tmp_path, uid=0)
    lines, calls = _run(tree, env, "test.sh", "-q", "tests/test_io.py")
    assert all(line.startswith("scripts/test.sh: ") for line in lines), lines
    said = "\n".join(lines)
    for fragment in ("updating pip in .venv", "installing torch 2.13.0 (CPU build)...",
                     "installing mmf_stream with its dev and torch extras",
                     "installing chromium redis-server (apt-get)...", "compiling the numba kernels",
                     "running pytest -q tests/test_io.py"):
        assert fragment in said, f"no line says {fragment!r}:\n{said}"
    warm = [i for i, line in enumerate(lines) if line.startswith("scripts/test.sh: kernels compiled and cached in ")]
    assert len(warm) == 1 and lines[warm[0]].endswith(" s"), lines
    assert warm[0] < len(lines) - 1 and "running pytest" in lines[warm[0] + 1]
    installs = [call for call in calls if call.startswith("apt-get") and " install " in call]
    assert len(installs) == 1 and installs[0].endswith(" chromium redis-server"), calls
    # the warm-up runs before pytest, and pytest gets the script's arguments
    assert calls.index("mmf-stream warmup --quiet") < calls.index("python -m pytest -q tests/test_io.py")
    assert calls[-1] == "python -m pytest -q tests/test_io.py"


def test_test_sh_installs_only_what_is_missing(tmp_path):
    tree, env = _sandbox(tmp_path, uid=0, present=("chromium",))
    lines, calls = _run(tree, env, "test.sh")
    assert "scripts/test.sh: installing redis-server (apt-get)..." in lines, lines
    installs = [call for call in calls if call.startswith("apt-get") and " install " in call]
    assert len(installs) == 1 and installs[0].endswith(" install -y -qq redis-server"), calls
    assert lines[-1] == "scripts/test.sh: running pytest"


def test_test_sh_without_root_says_what_will_be_skipped(tmp_path):
    tree, env = _sandbox(tmp_path, uid=1000)
    lines, calls = _run(tree, env, "test.sh")
    assert not [call for call in calls if call.startswith("apt-get")], calls
    said = "\n".join(lines)
    assert "chromium is missing; the browser test will be skipped" in said
    assert "redis-server is missing; the Redis queue tests will be skipped" in said


def test_demo_sh_says_each_step_and_warms_up_before_the_demo(tmp_path):
    tree, env = _sandbox(tmp_path, uid=1000)
    lines, calls = _run(tree, env, "demo.sh", "--size", "200")
    assert all(line.startswith("scripts/demo.sh: ") for line in lines), lines
    said = "\n".join(lines)
    assert "installing mmf_stream and its dependencies (pip install -e .)..." in said
    assert any(line.startswith("scripts/demo.sh: kernels compiled and cached in ") for line in lines), lines
    assert lines[-1] == "scripts/demo.sh: running mmf-stream demo --size 200"
    assert calls[-2:] == ["mmf-stream warmup --quiet", "mmf-stream demo --size 200"]
    assert not [call for call in calls if "torch" in call or call.startswith("apt-get")], calls


def test_a_failing_step_stops_the_script(tmp_path):
    tree, env = _sandbox(tmp_path, uid=1000)
    _executable(tree / ".venv" / "bin" / "python", f"#!{BASH}\nexit 3\n")
    result = subprocess.run([BASH, str(tree / "scripts" / "test.sh")], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 3
    assert result.stderr.splitlines()[-1] == "scripts/test.sh: updating pip in .venv...", result.stderr
