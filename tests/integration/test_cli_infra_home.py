"""`lamina infra up` with LAMINA_HOME outside the clone uses the jars that
infra/bootstrap.sh copied into the clone (it used to refuse and give advice
that could not work)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.broker import free_port

pytestmark = pytest.mark.integration

LAMINA = Path(sys.executable).with_name("lamina")


def test_infra_up_with_lamina_home_elsewhere_finds_the_bootstrapped_jars(tmp_path: Path) -> None:
    home = tmp_path / "home"  # empty: no kafka/libs of its own
    env = {**os.environ, "LAMINA_HOME": str(home),
           "LAMINA_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}

    def lamina(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(LAMINA), *args], env=env, capture_output=True, text=True,
                              timeout=180)

    try:
        up = lamina("infra", "up")
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert info["bootstrap_servers"] == env["LAMINA_KAFKA_BOOTSTRAP_SERVERS"]
        assert Path(info["cluster_dir"]).is_relative_to(home.resolve())
        status = lamina("infra", "status")
        assert status.returncode == 0 and json.loads(status.stdout)["healthy"], status.stderr
    finally:
        down = lamina("infra", "down")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {"stopped": ["single"]}
