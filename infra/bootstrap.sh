#!/usr/bin/env bash
# Make everything Lamina needs on a fresh machine, idempotently:
#   1. .venv with the pinned Python dependencies (skipped when pyproject.toml
#      and requirements.lock are unchanged since the last install);
#   2. Apache Kafka's jars under .lamina/kafka/libs, copied by Maven from
#      infra/kafka/pom.xml (skipped when the pom is unchanged);
#   3. Debian's redis-server (the tile-store tests start it as a user
#      process) and chromium (the browser tests drive it), installed with
#      apt when missing and running as root.
# Caches outside the clone (pip's, Maven's ~/.m2) make reruns fast.
# Quiet on success: a step's output is kept in .lamina/bootstrap.log and
# shown only if the step fails.
set -euo pipefail

# quietly LOG COMMAND...: run COMMAND with its output appended to LOG; if it
# fails, show that output and exit with its status.
quietly() {
  local log=$1 status=0 start
  shift
  start=$( [ -f "$log" ] && wc -c < "$log" || echo 0 )
  "$@" >>"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    tail -c +"$((start + 1))" "$log" >&2
    echo "bootstrap: '$*' failed with status $status (output above, also in $log)" >&2
    exit "$status"
  fi
}
# Sourced (by the tests): define the helpers only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp_dir=.lamina/stamps
mkdir -p "$stamp_dir"
log=.lamina/bootstrap.log
: > "$log"

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
  quietly "$log" .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  # pip shows the build backend's notices even with --quiet (setuptools
  # tells every editable install with a package-dir mapping that a folder
  # named like the package could shadow it): kept in the log.
  quietly "$log" .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -c requirements.lock -e '.[dev,batch,serving,airflow]'
  quietly "$log" .venv/bin/python -m pip check
  echo "$py_hash" > "$stamp_dir/python"
fi

# --- Kafka jars ---------------------------------------------------------------
kafka_hash=$(sha256sum infra/kafka/pom.xml | cut -d' ' -f1)
if [ "$(cat "$stamp_dir/kafka" 2>/dev/null)" != "$kafka_hash" ] || [ ! -d .lamina/kafka/libs ]; then
  echo "bootstrap: copying Kafka jars with Maven"
  rm -rf .lamina/kafka/libs
  quietly "$log" mvn -q -B -f infra/kafka/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$PWD/.lamina/kafka/libs"
  echo "$kafka_hash" > "$stamp_dir/kafka"
fi

# --- Debian packages the tests start as user processes ---------------------------
# apt_tool COMMAND PACKAGES WHAT: install PACKAGES with apt-get when COMMAND is
# missing and we are root; otherwise say which tests will fail and how to fix it.
apt_tool() {
  local cmd=$1 packages=$2 what=$3
  command -v "$cmd" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing $packages with apt-get"
    # Another apt-get (a second bootstrap, say) holds dpkg's lock: wait for
    # it rather than fail (two bootstraps at once failed so here).
    local wait=(-o DPkg::Lock::Timeout=300)
    # shellcheck disable=SC2086 # PACKAGES is a word list
    { DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq $packages ||
      { apt-get "${wait[@]}" update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq $packages; }
    } >/dev/null 2>&1 ||
      echo "bootstrap: apt-get could not install $packages; $what will fail until it is" \
        "installed (apt-get install -y $packages)" >&2
  else
    echo "bootstrap: $cmd is missing; $what will fail until it is installed" \
      "(as root: apt-get install -y $packages)" >&2
  fi
}
apt_tool redis-server redis-server "the Redis tile-store tests"
# Headless browser tests (the Airflow UI, the demo's report) drive Debian's
# chromium through Playwright; no browser is downloaded.
apt_tool chromium "chromium" "the browser tests"
