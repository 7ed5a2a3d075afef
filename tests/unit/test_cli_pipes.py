"""`lamina ... | head`: a reader that stops early ends the command quietly.

The commands run as real processes (the installed `lamina` script) with
stdout into a pipe that the test closes, as `head` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from lamina.master.dataset import MASTER_SCHEMA, MasterDataset

LAMINA = Path(sys.executable).with_name("lamina")
T0 = 1_767_225_600_000
# Far more than a pipe buffers (64 KiB) plus Python's stdout buffer (8 KiB):
# the command is still writing when the reader goes away.
APP_IDS = 3000


def master_with_many_offsets(home: Path) -> None:
    """A tiny master dataset whose `dataset info` prints APP_IDS offset lines."""
    dataset = MasterDataset(str(home / "master"))
    dataset.create_if_missing()
    rows = pa.table(
        {
            "event_id": ["tx-1"],
            "event_type": ["transaction"],
            "schema_version": pa.array([1], pa.int32()),
            "event_time": pa.array([T0], pa.timestamp("ms", tz="UTC")),
            "entity_key": ["card-1"],
            "kafka_topic": ["events.raw"],
            "kafka_partition": pa.array([0], pa.int32()),
            "kafka_offset": pa.array([0], pa.int64()),
            "ingest_time": pa.array([T0], pa.timestamp("ms", tz="UTC")),
            "payload": pa.array([b"{}"], pa.binary()),
        },
        schema=pa.schema([f for f in MASTER_SCHEMA if f.name != "event_date"]),
    )
    offsets = {f"lander:a-topic-with-a-long-name:{p}": p for p in range(APP_IDS)}
    dataset.append(dataset.table(), rows, offsets)


def env_with_home(home: Path) -> dict[str, str]:
    return {**os.environ, "LAMINA_HOME": str(home)}


def test_dataset_info_into_a_pipe_closed_after_one_line_exits_quietly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    master_with_many_offsets(home)
    proc = subprocess.Popen([str(LAMINA), "dataset", "info"], env=env_with_home(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # `head -1` has what it wanted
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.startswith(b"master dataset")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    # What a shell reports for a writer ended by SIGPIPE (`yes | head`).
    assert code == 128 + signal.SIGPIPE, (code, stderr)


def test_output_into_an_already_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """Small output is written only when Python flushes stdout at exit; that
    must not print 'Exception ignored ... BrokenPipeError' either."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([str(LAMINA), "schemas", "list"], env=env_with_home(tmp_path),
                              stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert done.returncode == 128 + signal.SIGPIPE, (done.returncode, stderr)

