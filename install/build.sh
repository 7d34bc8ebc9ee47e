#!/usr/bin/env bash
# Build the deployable artefacts into dist/:
#
#   bash install/build.sh [--python PY] [--interpreter PATH] [--out DIR] [--no-deb] [--no-wheel]
#
# --python PY         the Python that runs pip and zipapp (default: .venv's, else python3)
# --interpreter PATH  the .ext's shebang interpreter, run with -I (default /usr/bin/python3)
# --out DIR           where to write (default dist/)
#
# dist/readegress.ext            one file osquery autoloads (and fleetd's extension
#                                channel ships): a zipapp (stdlib zipapp) with its
#                                pure-Python dependencies vendored by `pip install
#                                --target` (osquery's bindings, future, thrift, tomli);
#                                needs only the host's python3 >= 3.9.
# dist/readegress-<v>-<python>-<abi>-<platform>.whl
#                                the package for pip, with the compiled accelerator
#                                readegress._speedups built for PY (`pip wheel`; needs
#                                gcc and PY's headers, e.g. python3-dev; without them
#                                the wheel has no accelerator and readegress runs its
#                                pure-Python code). Release wheels for every CPython
#                                and manylinux are built by cibuildwheel (see README,
#                                "Packaging"): a host never needs a compiler.
# dist/readegress_<v>_all.deb    the .ext in /usr/lib/readegress, the default config
#                                in /etc/readegress, an osquery flagfile fragment
#                                and the extensions.load entry; built with dpkg-deb.
#
# Compiled parts: a zip cannot carry C extensions (zipimport loads .py only),
# so the .ext vendors pure Python only (readegress._speedups is left out: the
# socket tables run their pure-Python twins). Thrift then uses its pure-Python binary
# protocol (fastbinary is dropped; readegress.osquery.protocol falls back to
# it), and apsw (the embedded SQLite engine of `readegress query` and `packs
# check`) is left out: the extension does not use it. psutil, duckdb and
# orjson are development and benchmark tools, never vendored.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py="${PYTHON:-}"
interpreter="/usr/bin/python3"
deb=1
wheel=1
out=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --python) py="$2"; shift 2 ;;
    --interpreter) interpreter="$2"; shift 2 ;;
    --no-deb) deb=0; shift ;;
    --no-wheel) wheel=0; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$py" ]; then
  if [ -x "$here/.venv/bin/python" ]; then py="$here/.venv/bin/python"; else py=python3; fi
fi
dist="${out:-$here/dist}"
mkdir -p "$dist"
work=$(mktemp -d "${TMPDIR:-/tmp}/readegress-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The runtime dependencies from pyproject.toml that are pure Python.
mapfile -t deps < <("$py" - "$here/pyproject.toml" <<'PY'
import re, sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
for dep in project["dependencies"]:
    name = re.split(r"[ <>=!~;\[]", dep, maxsplit=1)[0].lower()
    if name == "apsw":  # C extension; the extension itself never imports it
        continue
    print(dep.split(";")[0].strip())
PY
)
version=$("$py" - "$here/pyproject.toml" <<'PY'
import sys
try:
    import tomllib
except ImportError:
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f)["project"]["version"])
PY
)

stage="$work/ext"
mkdir -p "$stage"
"$py" -m pip install -q --disable-pip-version-check --no-compile \
  --target "$stage" "${deps[@]}" "tomli>=2.0"
# Pure Python only: drop compiled modules and install metadata scripts.
find "$stage" \( -name '*.so' -o -name '*.pyd' -o -name '__pycache__' \) -prune -exec rm -rf {} +
rm -rf "$stage/bin"
cp -r "$here/extension/readegress" "$stage/readegress"
# An in-place build of readegress._speedups (pip install -e) is left out with
# its source: the .ext runs the pure-Python twins.
find "$stage/readegress" \( -name '__pycache__' -o -name '*.egg-info' -o -name '*.so' \
  -o -name '_speedups.c' -o -name '_speedups.pyi' \) -prune -exec rm -rf {} +
mkdir -p "$stage/readegress/specs"
cp "$here"/tables/*.toml "$stage/readegress/specs/"
cat > "$stage/__main__.py" <<'PY'
# readegress.ext: osqueryd runs it as EXT --socket PATH --timeout N --interval N
import sys

from readegress.ext import main

sys.exit(main(sys.argv[1:], sys.argv[0]))
PY
"$py" -m zipapp "$stage" -o "$work/readegress.ext" -p "$interpreter -I" -c
chmod 0755 "$work/readegress.ext"
mv -f "$work/readegress.ext" "$dist/readegress.ext"
echo "built $dist/readegress.ext ($(stat -c %s "$dist/readegress.ext") bytes)"

if [ "$wheel" = 1 ]; then
  # From a copy of the sources: the build leaves nothing in the checkout.
  src="$work/src"
  mkdir -p "$src"
  cp -r "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$here/tables" "$src/"
  mkdir -p "$src/extension"
  cp -r "$here/extension/readegress" "$src/extension/readegress"
  find "$src" \( -name '__pycache__' -o -name '*.egg-info' -o -name '*.so' \) -prune -exec rm -rf {} +
  "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/wheel" "$src"
  for w in "$work"/wheel/readegress-*.whl; do
    mv -f "$w" "$dist/"
    echo "built $dist/$(basename "$w")"
  done
fi

[ "$deb" = 1 ] || exit 0
command -v dpkg-deb >/dev/null || { echo "build.sh: dpkg-deb not found (apt-get install dpkg)" >&2; exit 2; }
root="$work/deb"
install -d -m 0755 "$root/DEBIAN" "$root/usr/lib/readegress" "$root/etc/readegress" \
  "$root/usr/share/doc/readegress" "$root/usr/share/readegress"
install -m 0755 "$dist/readegress.ext" "$root/usr/lib/readegress/readegress.ext"
install -m 0644 "$here/extension/readegress/detect/default.toml" "$root/etc/readegress/readegress.toml"
install -m 0644 "$here/install/osquery.flags" "$root/usr/share/readegress/osquery.flags"
install -m 0644 "$here/packs/readegress.conf" "$here/packs/readegress_events.conf" \
  "$root/usr/share/readegress/"
cat > "$root/usr/share/doc/readegress/copyright" <<'TXT'
readegress: Apache-2.0. Vendored in readegress.ext: osquery (BSD-3-Clause),
thrift (Apache-2.0), tomli (MIT).
TXT
cat > "$root/DEBIAN/control" <<TXT
Package: readegress
Version: $version
Architecture: all
Maintainer: readegress maintainers <readegress@localhost>
Depends: python3 (>= 3.9)
Section: admin
Priority: optional
Description: osquery extension: sensitive file reads followed by network egress
 readegress.ext serves the read_then_egress, socket_bytes, process_net_bytes and
 readegress_health tables to osqueryd (MITRE AN0989). The package installs the
 extension, its config and the extensions.load entry; add the flags in
 /usr/share/readegress/osquery.flags to osqueryd's flagfile.
TXT
echo "/etc/readegress/readegress.toml" > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
# Lists the extension in osquery's autoload file (once) and creates the state
# directory. $DPKG_ROOT: dpkg --root with --force-script-chrootless.
set -e
ext=/usr/lib/readegress/readegress.ext
load="${DPKG_ROOT:-}/etc/osquery/extensions.load"
if [ "$1" = configure ]; then
  install -d -m 0700 "${DPKG_ROOT:-}/var/lib/readegress"
  install -d -m 0755 "${DPKG_ROOT:-}/etc/osquery"
  touch "$load"
  grep -qxF "$ext" "$load" || echo "$ext" >> "$load"
fi
exit 0
SH
cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
# Drops the extension from osquery's autoload file before its binary goes.
set -e
ext=/usr/lib/readegress/readegress.ext
load="${DPKG_ROOT:-}/etc/osquery/extensions.load"
if [ "$1" = remove ] || [ "$1" = deconfigure ]; then
  if [ -f "$load" ]; then
    grep -vxF "$ext" "$load" > "$load.readegress-tmp" || true
    cat "$load.readegress-tmp" > "$load"
    rm -f "$load.readegress-tmp"
  fi
fi
exit 0
SH
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
# purge also removes the extension's state (detections, cursors).
set -e
if [ "$1" = purge ]; then
  rm -rf "${DPKG_ROOT:-}/var/lib/readegress"
fi
exit 0
SH
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
deb_file="$dist/readegress_${version}_all.deb"
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb_file" >/dev/null
echo "built $deb_file"
