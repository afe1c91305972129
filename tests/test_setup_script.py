"""scripts/setup.sh installs into a virtual environment, never into the system Python, and CI runs
the README's own test command.

The script runs for real, with a recording stand-in for the system Python (PYTHON=...) whose
`-m venv DIR` makes a stand-in environment: what each interpreter was asked to do is logged.
(A real install takes minutes; `.ci/run` does that on a clean clone.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

RECORDER = """#!/usr/bin/env bash
echo "{name} $*" >> "{log}"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  sed -e 's/^NAME=.*/NAME=venv/' "$0" > "$3/bin/python"
  chmod +x "$3/bin/python"
  printf '#!/usr/bin/env bash\\necho "chatvlm 0.0-test"\\n' > "$3/bin/chatvlm"
  chmod +x "$3/bin/chatvlm"
fi
exit 0
"""


def recorder(path: Path, name: str, log: Path) -> Path:
    path.write_text(RECORDER.replace("{name}", "$NAME").replace("{log}", str(log)).replace(
        "#!/usr/bin/env bash\n", f"#!/usr/bin/env bash\nNAME={name}\n", 1))
    path.chmod(0o755)
    return path


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="Debian/Ubuntu only (dpkg)")
def test_setup_installs_into_a_virtual_environment(tmp_path):
    for pkg in ("poppler-utils", "tesseract-ocr", "tesseract-ocr-eng", "tesseract-ocr-rus", "tesseract-ocr-osd", "fonts-dejavu-core"):
        if subprocess.run(["dpkg", "-s", pkg], capture_output=True).returncode != 0:
            pytest.skip(f"{pkg} is not installed, so the script would call apt-get")
    log = tmp_path / "calls.log"
    system_python = recorder(tmp_path / "python3", "system", log)
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": str(system_python), "CHATVLM_VENV": str(venv)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--test"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    system = [c for c in calls if c.startswith("system ")]
    in_venv = [c for c in calls if c.startswith("venv ")]
    assert f"system -m venv {venv}" in system
    assert not any(" pip " in c for c in system)                 # nothing pip-installed into the system Python
    assert "venv -m pip install -q torch==2.14.1 torchvision==0.29.1" in in_venv
    assert any(re.search(r"-m pip install -q -e \.\[test[],]", c) for c in in_venv)
    assert f"installed in {venv}" in done.stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(bash scripts/setup.sh --test && .+)$", readme, re.M)
    assert commands, "README quick start has no test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in ci
    assert ".venv/bin/" in commands[0]
