"""infra/production/ holds the configuration of Lamina at scale; nothing of
it runs here (no cluster, no GPU, no Docker engine), so these checks are
what keeps it true: the production lamina.toml loads through the real
settings loader with every section and points at the services the other
files configure; the Spark files parse and Lamina's spark-submit builder
asks the training step for GPUs the workers offer; the Kafka nodes form one
quorum; Airflow's variables name options Airflow has; every file
infra/README.md names exists. Each check returns its problems, and a
mutated copy of a file is shown to produce one (the checks can fail)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
import types
from dataclasses import fields
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from lamina.config import SECTIONS, Settings, load_settings
from lamina.errors import ConfigError
from lamina.orchestration import spark_jobs

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PROD = INFRA / "production"
TOML = PROD / "lamina.toml"
README = INFRA / "README.md"
GPU_KEYS = ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount")


# --- parsers of the file formats ---------------------------------------------------


def spark_properties(path: Path) -> dict[str, str]:
    """spark-defaults.conf: ``key<whitespace>value`` lines, ``#`` comments."""
    props: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if not key.startswith("spark.") or not value.strip():
            raise ValueError(f"{path.name}:{number}: not a Spark property: {line!r}")
        props[key] = value.strip()
    return props


def assignments(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (shell or Java properties), ``#`` comments."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", key):
            raise ValueError(f"{path.name}:{number}: not KEY=VALUE: {line!r}")
        out[key] = value
    return out


def redis_directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            out.setdefault(words[0].lower(), []).append(" ".join(words[1:]))
    return out


def conf_pairs(command: list[str]) -> dict[str, str]:
    pairs = [command[i + 1] for i, word in enumerate(command) if word == "--conf"]
    return dict(pair.split("=", 1) for pair in pairs)


# --- the checks (each returns its problems) -------------------------------------------


def settings_problems(toml: Path) -> list[str]:
    """The production settings: every section written out, the locations
    where infra/README.md says they are."""
    problems = []
    written = set(tomllib.loads(toml.read_text()))
    missing = (set(SECTIONS) | {"home"}) - written
    if missing:
        problems.append(f"sections left to the laptop defaults: {sorted(missing)}")
    s = load_settings(toml, env={})
    if s.tile_store.kind != "redis" or not str(s.tile_store.options.get("url", "")).startswith(
            "redis://"):
        problems.append(f"tile store is not a redis:// server: {s.tile_store}")
    if urlsplit(s.registry.tracking_uri).scheme not in ("http", "https"):
        problems.append(f"registry is not an MLflow server: {s.registry.tracking_uri!r}")
    if not s.spark.master.startswith("spark://"):
        problems.append(f"spark master is not a standalone master: {s.spark.master!r}")
    for name in ("master_uri", "views_uri", "training_sets_uri", "models_uri"):
        if getattr(s, name).startswith(str(s.home)):
            problems.append(f"{name} is under the per-host home {s.home}")
    if s.spark.conf.get("spark.driver.host", "127.0.0.1") in ("127.0.0.1", "localhost"):
        problems.append("spark.driver.host is loopback: executors cannot reach the driver")
    readme = README.read_text()
    for value in (s.spark.master, s.registry.tracking_uri, s.tile_store.options.get("url", ""),
                  s.master_uri):
        if value not in readme:
            problems.append(f"infra/README.md does not say where {value!r} is")
    return problems


def spark_problems(settings: Settings, spark_dir: Path) -> list[str]:
    """The training step's spark-submit asks for GPUs the workers offer, the
    other steps ask for none, and the files agree on the master."""
    problems = []
    defaults = spark_properties(spark_dir / "spark-defaults.conf")
    env = assignments(spark_dir / "spark-env.sh")
    master = f"spark://{env['SPARK_MASTER_HOST']}:{env['SPARK_MASTER_PORT']}"
    if {defaults.get("spark.master"), settings.spark.master} != {master}:
        problems.append(f"masters differ: spark-env {master}, spark-defaults "
                        f"{defaults.get('spark.master')}, lamina.toml {settings.spark.master}")
    train = spark_jobs.spark_submit_equivalent(settings, "train")
    if train[:3] != ["spark-submit", "--master", settings.spark.master] or train[-1] != "train":
        problems.append(f"unexpected spark-submit line: {train}")
    asked = conf_pairs(train)
    for key in GPU_KEYS:
        if key not in asked:
            problems.append(f"the training step's spark-submit does not pass {key}")
    for step in ("views", "publish", "training_sets"):
        gpu = [k for k in conf_pairs(spark_jobs.spark_submit_equivalent(settings, step))
               if ".resource.gpu." in k]
        if gpu:
            problems.append(f"step {step} asks for GPUs: {gpu}")
    worker_gpus = int(defaults.get("spark.worker.resource.gpu.amount", "0"))
    executor_gpus = int(asked.get(GPU_KEYS[0], "0"))
    task_gpus = int(asked.get(GPU_KEYS[1], "0"))
    if not 0 < task_gpus <= executor_gpus <= worker_gpus:
        problems.append(f"GPUs: task {task_gpus}, executor {executor_gpus}, worker "
                        f"{worker_gpus} (each must fit in the next)")
    cores = int(asked.get("spark.executor.cores", "1"))
    task_cpus = int(asked.get("spark.task.cpus", "1"))
    if task_gpus and cores // task_cpus != executor_gpus // task_gpus:
        problems.append(f"task slots by CPU ({cores}//{task_cpus}) and by GPU "
                        f"({executor_gpus}//{task_gpus}) differ: resources left idle")
    if worker_gpus and executor_gpus and \
            int(env["SPARK_WORKER_CORES"]) // cores < worker_gpus // executor_gpus:
        problems.append("a worker has too few cores to run an executor per GPU")
    script = Path(defaults.get("spark.worker.resource.gpu.discoveryScript", ""))
    local = spark_dir / script.name
    if script.parts[-4:-1] != ("infra", "production", "spark") or not local.exists() \
            or not local.stat().st_mode & stat.S_IXUSR:
        problems.append(f"discovery script {script} is not an executable file of "
                        "infra/production/spark/")
    return problems


def kafka_problems(settings: Settings, kafka_dir: Path) -> list[str]:
    problems = []
    nodes = [assignments(p) for p in sorted(kafka_dir.glob("node-*.properties"))]
    if [n.get("node.id") for n in nodes] != ["1", "2", "3"]:
        problems.append(f"node ids: {[n.get('node.id') for n in nodes]}")
    voters = {n.get("controller.quorum.voters") for n in nodes}
    if len(voters) != 1:
        problems.append(f"the nodes disagree on the voters: {voters}")
    advertised = []
    for node in nodes:
        host_port = node.get("advertised.listeners", "").removeprefix("PLAINTEXT://")
        advertised.append(host_port)
        controller = re.search(r"CONTROLLER://[^:,]*:(\d+)", node.get("listeners", ""))
        me = f"{node.get('node.id')}@{host_port.split(':')[0]}:" \
             f"{controller.group(1) if controller else '?'}"
        if me not in next(iter(voters)).split(","):
            problems.append(f"node {node.get('node.id')} is not a voter as {me}")
        for key, want in (("process.roles", "broker,controller"),
                          ("default.replication.factor", "3"), ("min.insync.replicas", "2"),
                          ("offsets.topic.replication.factor", "3"),
                          ("transaction.state.log.min.isr", "2"),
                          ("auto.create.topics.enable", "false"),
                          ("unclean.leader.election.enable", "false")):
            if node.get(key) != want:
                problems.append(f"node {node.get('node.id')}: {key}={node.get(key)}, not {want}")
    if settings.kafka.bootstrap_servers.split(",") != advertised:
        problems.append(f"lamina.toml bootstrap servers {settings.kafka.bootstrap_servers} "
                        f"are not the nodes' advertised listeners {advertised}")
    return problems


def airflow_template() -> dict[str, Any]:
    spec = find_spec("airflow")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "config_templates" / "config.yml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    template: dict[str, Any] = yaml.load(path.read_text(), Loader=loader)
    return template


def airflow_problems(env_file: Path, template: dict[str, Any]) -> list[str]:
    """Every AIRFLOW__SECTION__KEY names an option of Airflow's own config
    template (the [celery] section comes from the Celery provider, which
    is not installed here: its keys are checked against a list), secrets
    only through _CMD, and the distributed shape."""
    celery = {"broker_url", "result_backend", "worker_concurrency"}
    problems = []
    env = assignments(env_file)
    for name, value in env.items():
        if not name.startswith("AIRFLOW__"):
            continue
        section, _, key = name.removeprefix("AIRFLOW__").lower().partition("__")
        command = key.endswith("_cmd")
        key = key.removesuffix("_cmd")
        if section == "celery":
            known = key in celery
        else:
            option = template.get(section, {}).get("options", {}).get(key)
            known = option is not None
            if known and option.get("sensitive") and not command:
                problems.append(f"{name} is a secret: use {name}_CMD")
        if not known:
            problems.append(f"{name}: Airflow has no option [{section}] {key}")
        if command and not value.startswith("cat /run/secrets/"):
            problems.append(f"{name} does not read a secret file")
    if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
        problems.append("the executor is not CeleryExecutor")
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD" not in env:
        problems.append("no metadata database (sql_alchemy_conn) configured")
    if env.get("LAMINA_CONFIG", "").rpartition("/")[2] != "lamina.toml":
        problems.append("LAMINA_CONFIG does not point at a lamina.toml")
    return problems


def readme_problems(readme: Path) -> list[str]:
    """Every repository path the page names (in backticks) exists."""
    problems = []
    for name in sorted(set(re.findall(r"`((?:infra|dags|benchmarks|tests|lamina|orchestration|"
                                      r"batch|docs)/[^`\s]*|docker-compose\.yml)`",
                                      readme.read_text()))):
        if not (REPO / name.rstrip("/")).exists():
            problems.append(f"infra/README.md names {name}, which does not exist")
    return problems


# --- the tests ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(TOML, env={})


def test_the_production_settings_load_with_every_section_and_point_at_the_services() -> None:
    assert settings_problems(TOML) == []


def test_a_wrong_production_setting_is_caught(tmp_path: Path) -> None:
    text = TOML.read_text()
    unknown = tmp_path / "unknown.toml"
    unknown.write_text(text.replace('raw_partitions = 12', 'raw_partitons = 12'))
    with pytest.raises(ConfigError, match="raw_partitons"):
        load_settings(unknown, env={})
    embedded = tmp_path / "embedded.toml"
    embedded.write_text(text.replace('kind = "redis"', 'kind = "sqlite"')
                        .replace("http://mlflow", "sqlite:///mlflow"))
    problems = settings_problems(embedded)
    assert any("tile store" in p for p in problems)
    assert any("registry" in p for p in problems)
    # Every section of the real loader is in the file.
    assert {f.name for f in fields(Settings)} <= set(tomllib.loads(text))


def test_the_training_step_asks_spark_for_gpus_the_workers_offer(settings: Settings) -> None:
    assert spark_problems(settings, PROD / "spark") == []
    train = spark_jobs.spark_submit_equivalent(settings, "train")
    assert conf_pairs(train)["spark.task.resource.gpu.amount"] == "1"


def test_a_gpu_key_only_in_the_wrong_place_is_caught(settings: Settings,
                                                     tmp_path: Path) -> None:
    import dataclasses

    moved = dataclasses.replace(settings, spark=dataclasses.replace(
        settings.spark, conf={**settings.spark.conf, **settings.spark.train_conf},
        train_conf={}))
    assert any("step views asks for GPUs" in p for p in spark_problems(moved, PROD / "spark"))
    typo = dataclasses.replace(settings, spark=dataclasses.replace(
        settings.spark, train_conf={"spark.task.resources.gpu.amount": "1"}))
    assert any("does not pass spark.task.resource.gpu.amount" in p
               for p in spark_problems(typo, PROD / "spark"))
    spark_dir = tmp_path / "spark"
    spark_dir.mkdir()
    for path in (PROD / "spark").iterdir():
        (spark_dir / path.name).write_bytes(path.read_bytes())
        (spark_dir / path.name).chmod(path.stat().st_mode)
    defaults = spark_dir / "spark-defaults.conf"
    defaults.write_text(defaults.read_text().replace(
        "spark.worker.resource.gpu.amount                4",
        "spark.worker.resource.gpu.amount                0"))
    assert any("GPUs:" in p for p in spark_problems(settings, spark_dir))
    defaults.write_text(defaults.read_text() + "spark.eventLog.enabled\n")
    with pytest.raises(ValueError, match="not a Spark property"):
        spark_properties(defaults)


def test_the_train_step_builds_its_session_with_the_training_conf(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # The step hands the master and the training conf to train_command,
    # which starts the session only when it has to train (a retry after the
    # model was saved starts no JVM: test_registry.py checks that part).
    seen: dict[str, Any] = {}

    def fake_train(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        return {"version": 1}

    # A stand-in for the training command (this checks the wiring only; the
    # integration tests train on real Spark). A module, not an attribute:
    # the real one imports TensorFlow, seconds of a unit test.
    monkeypatch.setitem(sys.modules, "lamina.batch.commands",
                        types.SimpleNamespace(train_command=fake_train))
    assert spark_jobs.STEPS["train"](settings, {"training_set": "t", "snapshot": 3,
                                                 "workers": 2}) == {"version": 1}
    assert seen["spark_master"] == settings.spark.master
    assert dict(seen["spark_conf"]) == {**settings.spark.conf, **settings.spark.train_conf}
    assert seen["workers"] == 2 and "spark" not in seen


def test_the_gpu_discovery_script_prints_what_spark_reads(tmp_path: Path) -> None:
    script = str(PROD / "spark" / "gpu-discovery.sh")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    found = subprocess.run(["/bin/bash", script], env={"PATH": str(tmp_path)},
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0, found.stderr
    import json

    assert json.loads(found.stdout) == {"name": "gpu", "addresses": ["0", "1"]}
    missing = subprocess.run(["/bin/bash", script], env={"PATH": str(tmp_path / "none")},
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "nvidia-smi not found" in missing.stderr


def test_the_kafka_nodes_form_one_quorum_and_are_lamina_s_bootstrap(
        settings: Settings, tmp_path: Path) -> None:
    assert kafka_problems(settings, PROD / "kafka") == []
    for path in (PROD / "kafka").glob("node-*.properties"):
        text = path.read_text()
        if path.name == "node-3.properties":
            text = text.replace("min.insync.replicas=2", "min.insync.replicas=1")
        (tmp_path / path.name).write_text(text)
    assert kafka_problems(settings, tmp_path) == [
        "node 3: min.insync.replicas=1, not 2"]


def test_the_tile_store_redis_and_the_mlflow_server_match_the_settings(
        settings: Settings) -> None:
    store = redis_directives(PROD / "redis" / "redis.conf")
    url = urlsplit(settings.tile_store.options["url"])
    assert store["port"] == [str(url.port)]
    assert store["maxmemory-policy"] == ["noeviction"] and store["appendonly"] == ["yes"]
    broker = redis_directives(PROD / "redis" / "airflow-broker.conf")
    assert broker["maxmemory-policy"] == ["noeviction"]
    server = PROD / "mlflow" / "mlflow-server.sh"
    assert subprocess.run(["/bin/bash", "-n", str(server)], check=False).returncode == 0
    words = shlex.split(server.read_text().split("exec ", 1)[1].replace("\\\n", " "),
                        comments=True)
    assert words[:2] == ["mlflow", "server"]
    tracking = urlsplit(settings.registry.tracking_uri)
    assert words[words.index("--port") + 1] == str(tracking.port)
    assert "--serve-artifacts" in words and tracking.hostname in words[
        words.index("--allowed-hosts") + 1]


def test_airflow_s_variables_name_real_options_and_the_distributed_shape(
        tmp_path: Path) -> None:
    template = airflow_template()
    assert airflow_problems(PROD / "airflow" / "airflow.env", template) == []
    wrong = tmp_path / "airflow.env"
    wrong.write_text((PROD / "airflow" / "airflow.env").read_text()
                     .replace("AIRFLOW__CORE__PARALLELISM", "AIRFLOW__CORE__PARALELISM")
                     .replace("AIRFLOW__CORE__FERNET_KEY_CMD=cat /run/secrets/airflow-fernet-key",
                              "AIRFLOW__CORE__FERNET_KEY=abc"))
    assert airflow_problems(wrong, template) == [
        "AIRFLOW__CORE__PARALELISM: Airflow has no option [core] paralelism",
        "AIRFLOW__CORE__FERNET_KEY is a secret: use AIRFLOW__CORE__FERNET_KEY_CMD"]


def test_every_file_infra_readme_names_exists(tmp_path: Path) -> None:
    assert readme_problems(README) == []
    text = README.read_text()
    assert "`infra/production/lamina.toml`" in text
    for path in sorted(PROD.rglob("*")):
        if path.is_file():
            assert str(path.relative_to(REPO)) in text, f"{path} is not on the page"
    broken = tmp_path / "README.md"
    broken.write_text(text + "\nSee `infra/production/nope.conf`.\n")
    assert readme_problems(broken) == [
        "infra/README.md names infra/production/nope.conf, which does not exist"]
    assert os.access(PROD / "mlflow" / "mlflow-server.sh", os.X_OK)
