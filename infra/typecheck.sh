#!/usr/bin/env bash
# Type-check Lamina as the package it is installed as.
#
# The source folders are mapped onto one package (pyproject.toml:
# `lamina.schemas` = schemas/, `lamina.speed` = speed/, ...). mypy cannot
# read that mapping, so run on the folders themselves it names the modules
# `schemas.online`, `speed.realtime`, ... and finds no `lamina.schemas.*`
# for their imports -- which `ignore_missing_imports` then turns into Any,
# silently: every type that crosses a module went unchecked. Here mypy
# checks `-p lamina` in a tree of symlinks laid out as installed
# (.lamina/typecheck/lamina/schemas -> schemas/, ...), plus `benchmarks`,
# and the paths it prints are mapped back to the repository's.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tree="$repo/.lamina/typecheck"
# The mapped folders, read from pyproject.toml (one line per package).
mapped=$(sed -n '/^\[tool.setuptools.package-dir\]/,/^\[/p' "$repo/pyproject.toml" \
         | sed -n 's/^"lamina\.\([a-z_]*\)" = "\([a-z_]*\)"$/\1 \2/p')
if [ -z "$mapped" ]; then
  echo "typecheck: no [tool.setuptools.package-dir] entries found in pyproject.toml" >&2
  exit 2
fi

rm -rf "$tree/lamina" "$tree/benchmarks"
mkdir -p "$tree/lamina"
for file in "$repo"/lamina/*.py; do
  ln -s "$file" "$tree/lamina/"
done
while read -r package folder; do
  ln -s "$repo/$folder" "$tree/lamina/$package"
done <<< "$mapped"
ln -s "$repo/benchmarks" "$tree/benchmarks"

# lamina/<package>/x.py -> <folder>/x.py in mypy's output.
rewrite=()
while read -r package folder; do
  rewrite+=(-e "s#^lamina/$package/#$folder/#")
done <<< "$mapped"

cd "$tree"
set +e
"$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" --cache-dir "$tree/.mypy_cache" \
  -p lamina -p benchmarks 2>&1 | sed "${rewrite[@]}"
status=${PIPESTATUS[0]}
set -e
exit "$status"
