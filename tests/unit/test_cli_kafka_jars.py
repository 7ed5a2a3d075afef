"""Where Lamina finds Kafka's jars, and what it says when they are not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.broker import kafka_libs
from lamina.config import Settings
from lamina.errors import InfraError


def fake_clone(root: Path, *, with_jars: bool) -> Path:
    (root / "infra").mkdir(parents=True)
    (root / "infra" / "bootstrap.sh").write_text("#!/bin/sh\n")
    if with_jars:
        libs = root / ".lamina" / "kafka" / "libs"
        libs.mkdir(parents=True)
        (libs / "kafka_2.13-4.4.0.jar").write_bytes(b"")
    return root


def test_jars_bootstrapped_in_the_clone_are_found_whatever_lamina_home_is(tmp_path: Path) -> None:
    clone = fake_clone(tmp_path / "clone", with_jars=True)
    settings = Settings(home=tmp_path / "elsewhere")
    assert kafka_libs(settings, clone=clone) == (clone / ".lamina" / "kafka" / "libs").resolve()


def test_jars_in_lamina_home_come_first(tmp_path: Path) -> None:
    clone = fake_clone(tmp_path / "clone", with_jars=True)
    own = fake_clone(tmp_path / "own", with_jars=True) / ".lamina"
    assert kafka_libs(own, clone=clone) == (own / "kafka" / "libs").resolve()


def test_missing_jars_name_the_clones_bootstrap_script_by_its_path(tmp_path: Path) -> None:
    clone = fake_clone(tmp_path / "clone", with_jars=False)
    with pytest.raises(InfraError) as caught:
        kafka_libs(Settings(home=tmp_path / "elsewhere"), clone=clone)
    message = str(caught.value)
    # Runnable from any directory, and it fills the folder that is searched.
    assert f"`{clone / 'infra' / 'bootstrap.sh'}`" in message
    assert str(clone / ".lamina" / "kafka" / "libs") in message
    assert str(tmp_path / "elsewhere" / "kafka" / "libs") in message


def test_the_real_clone_is_where_the_bootstrap_put_the_jars() -> None:
    repo = Path(__file__).resolve().parents[2]
    assert kafka_libs(Settings(home=Path("/nonexistent/lamina-home"))) == (
        repo / ".lamina" / "kafka" / "libs").resolve()
