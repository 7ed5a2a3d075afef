"""Building the package (what infra/bootstrap.sh's editable install does)
is quiet on success and still ships the event and record schemas."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_building_the_package_prints_no_setuptools_warnings_and_ships_the_schemas(
    tmp_path: Path,
) -> None:
    # A copy: setuptools builds in the source tree and would leave build/
    # and *.egg-info in the clone.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".lamina", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    # -v: pip shows the build backend's output only when asked (older pips)
    # or always (newer ones, which is what a bootstrap prints).
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-v",
         str(source), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines()
                if re.search(r"_Warning|Warning:|would be ignored", line)]
    assert warnings == [], "\n".join(warnings[:10])
    (wheel,) = tmp_path.glob("lamina-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("events", "records"):  # event schemas; output records (scores.v1)
        schemas = sorted(n for n in names if n.startswith(f"lamina/schemas/{folder}/"))
        in_repo = sorted(f"lamina/{p.relative_to(REPO).as_posix()}"
                         for p in (REPO / "schemas" / folder).glob("*/*.json"))
        assert in_repo and schemas == in_repo, folder


def run_bootstrap_step(log: Path, command: str) -> subprocess.CompletedProcess[str]:
    """One step through infra/bootstrap.sh's `quietly`, the way the
    bootstrap runs its pip and Maven commands."""
    script = f'source "{REPO}/infra/bootstrap.sh"; quietly "{log}" sh -c \'{command}\'; echo done'
    # In a scratch directory: a bootstrap without the sourcing guard would
    # run its steps from the parent of the cwd.
    scratch = log.parent / "scratch" / "cwd"
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", "-c", script], cwd=scratch, capture_output=True, text=True,
                          timeout=60)


def test_a_bootstrap_step_prints_nothing_when_it_succeeds(tmp_path: Path) -> None:
    step = run_bootstrap_step(tmp_path / "bootstrap.log",
                              "echo a notice; echo a warning >&2; exit 0")
    assert (step.returncode, step.stdout, step.stderr) == (0, "done\n", "")
    assert "a warning" in (tmp_path / "bootstrap.log").read_text()


def test_a_failing_bootstrap_step_shows_its_output_and_fails(tmp_path: Path) -> None:
    log = tmp_path / "bootstrap.log"
    log.write_text("an earlier step's output\n")
    step = run_bootstrap_step(log, "echo collecting; echo ERROR: no such version >&2; exit 3")
    assert step.returncode == 3 and "done" not in step.stdout
    assert "collecting\nERROR: no such version\n" in step.stderr
    assert "an earlier step" not in step.stderr  # only the failing step's output
    assert "failed with status 3" in step.stderr
