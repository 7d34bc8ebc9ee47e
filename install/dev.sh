#!/usr/bin/env bash
# Set up a development environment (idempotent) and run one thing in it.
#
#   bash install/dev.sh query "SELECT pid, remote_address, bytes_sent FROM socket_bytes"
#   bash install/dev.sh test [pytest args...]
#   bash install/dev.sh lint            # ruff + mypy
#   bash install/dev.sh bench ...       # see bench/README.md
#   bash install/dev.sh <any readegress subcommand ...>
#
# Needs: Debian/Ubuntu with python3 >= 3.9. As root it installs the system
# packages it needs with apt-get; otherwise it says which are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv="${READEGRESS_VENV:-$here/.venv}"

need_pkgs=()
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v ss >/dev/null || need_pkgs+=(iproute2)
command -v unshare >/dev/null || need_pkgs+=(util-linux)
command -v setpriv >/dev/null || need_pkgs+=(util-linux)
command -v curl >/dev/null || need_pkgs+=(curl)
# install/build.sh (tested in tests/test_deploy.py) builds the .deb with dpkg-deb.
command -v dpkg-deb >/dev/null || need_pkgs+=(dpkg)
# The compiled accelerator (readegress._speedups, built by pip install -e) needs a
# C compiler and the Python headers; without them readegress runs its pure-Python
# code, so as non-root they are only suggested.
want_pkgs=()
command -v gcc >/dev/null || want_pkgs+=(gcc)
python3 -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
  || want_pkgs+=(python3-dev)
if [ "${#want_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need_pkgs+=("${want_pkgs[@]}")
  else
    echo "dev.sh: no ${want_pkgs[*]}: readegress._speedups is not built (pure-Python paths run)" >&2
  fi
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "dev.sh: installing ${need_pkgs[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "dev.sh: missing system packages: ${need_pkgs[*]} (install them with apt-get as root)" >&2
    exit 2
  fi
fi

stamp="$venv/.readegress-installed"
# READEGRESS_EXTRAS=dev,spark adds pyspark (CI sets it; the Spark tests skip without it).
extras="${READEGRESS_EXTRAS:-dev}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Rebuild the accelerator in place when its source changed or it was never built
# (a compiler installed since).
speedups_so=$(ls extension/readegress/_speedups*.so 2>/dev/null | head -n 1 || true)
if [ -f "$stamp" ] && command -v gcc >/dev/null \
  && { [ -z "$speedups_so" ] || [ extension/readegress/_speedups.c -nt "$speedups_so" ] \
    || [ extension/readegress/_logscan.c -nt "$speedups_so" ] \
    || [ extension/readegress/_logscan.h -nt "$speedups_so" ]; }; then
  rm -f "$stamp"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
  || [ "$(cat "$stamp")" != "$extras" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
  echo "$extras" > "$stamp"
fi

cmd="${1:-test}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
  test)
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  lint)
    "$venv/bin/ruff" check extension tests bench
    "$venv/bin/ruff" format --check extension tests bench
    exec "$venv/bin/mypy"
    ;;
  bench)
    exec "$venv/bin/python" -m bench "$@"
    ;;
  *)
    exec "$venv/bin/readegress" "$cmd" "$@"
    ;;
esac
