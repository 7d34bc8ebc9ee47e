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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$extras" ]; then
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
