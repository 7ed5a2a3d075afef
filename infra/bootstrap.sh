#!/usr/bin/env bash
# Make everything Lamina needs on a fresh machine, idempotently:
#   1. .venv with the pinned Python dependencies (skipped when pyproject.toml
#      and requirements.lock are unchanged since the last install);
#   2. Apache Kafka's jars under .lamina/kafka/libs, copied by Maven from
#      infra/kafka/pom.xml (skipped when the pom is unchanged);
#   3. Debian's redis-server, which the tile-store tests start as a user
#      process (installed with apt when missing and running as root).
# Caches outside the clone (pip's, Maven's ~/.m2) make reruns fast.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp_dir=.lamina/stamps
mkdir -p "$stamp_dir"

need() { command -v "$1" >/dev/null || { echo "bootstrap: '$1' is required ($2)" >&2; exit 1; }; }
need "$PYTHON" "Python 3.11"
need java "Java 17 runs the Kafka broker"
need mvn "Maven copies Kafka's published jars"

# --- Python environment -------------------------------------------------------
py_hash=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  rm -f "$stamp_dir/python"
fi
if [ "$(cat "$stamp_dir/python" 2>/dev/null)" != "$py_hash" ]; then
  echo "bootstrap: installing pinned Python dependencies"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements.lock -e '.[dev,batch]'
  .venv/bin/python -m pip check
  echo "$py_hash" > "$stamp_dir/python"
fi

# --- Kafka jars ---------------------------------------------------------------
kafka_hash=$(sha256sum infra/kafka/pom.xml | cut -d' ' -f1)
if [ "$(cat "$stamp_dir/kafka" 2>/dev/null)" != "$kafka_hash" ] || [ ! -d .lamina/kafka/libs ]; then
  echo "bootstrap: copying Kafka jars with Maven"
  rm -rf .lamina/kafka/libs
  mvn -q -B -f infra/kafka/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$PWD/.lamina/kafka/libs"
  echo "$kafka_hash" > "$stamp_dir/kafka"
fi

# --- redis-server (the Redis tile store's tests) ----------------------------------
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing redis-server with apt-get"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
    } >/dev/null 2>&1 ||
      echo "bootstrap: apt-get could not install redis-server; the Redis tile-store tests" \
        "will fail until it is installed (apt-get install -y redis-server)" >&2
  else
    echo "bootstrap: redis-server is missing; the Redis tile-store tests will fail until it" \
      "is installed (as root: apt-get install -y redis-server)" >&2
  fi
fi
