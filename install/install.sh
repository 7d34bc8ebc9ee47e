#!/usr/bin/env bash
# Install readegress on a host that runs osqueryd (as root).
#
#   sudo bash install/install.sh [--prefix /opt/readegress] [--etc /etc] [--no-autoload]
#
# 1. a virtualenv under PREFIX with this source tree installed (not editable);
# 2. PREFIX/readegress.ext: the autoload entry osqueryd launches. osqueryd
#    refuses an extension unless it ends in .ext, is a regular executable file
#    owned by root, not world-writable, in a directory without the sticky bit
#    ("Extension binary has unsafe permissions" in its log names no check);
# 3. ETC/osquery/extensions.load lists it (one path per line);
# 4. ETC/readegress/readegress.toml: the default config, root-owned 0644, if absent;
# 5. /var/lib/readegress (0700) for the extension's state.
# It then prints the osquery flags readegress needs (install/osquery.flags).
set -euo pipefail
prefix=/opt/readegress
etc=/etc
autoload=1
while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --etc) etc="$2"; shift 2 ;;
    --no-autoload) autoload=0; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (osqueryd only autoloads root-owned extensions)" >&2
  exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
umask 022
mkdir -p "$prefix"
python3 -m venv "$prefix/venv"
"$prefix/venv/bin/python" -m pip install -q --disable-pip-version-check "$src"

ext="$prefix/readegress.ext"
cat > "$ext.tmp" <<PY
#!$prefix/venv/bin/python
# readegress osquery extension; osqueryd runs it as: EXT --socket PATH --timeout N --interval N
import os, sys
from readegress.cli import main
args = ["extension", *sys.argv[1:]]
config = "$etc/readegress/readegress.toml"
if os.path.exists(config) and "--config" not in args:
    args += ["--config", config]
sys.exit(main(args))
PY
chown root:root "$ext.tmp"
chmod 0755 "$ext.tmp"
mv -f "$ext.tmp" "$ext"

mkdir -p "$etc/readegress"
if [ ! -e "$etc/readegress/readegress.toml" ]; then
  install -o root -g root -m 0644 "$src/extension/readegress/detect/default.toml" \
    "$etc/readegress/readegress.toml"
fi
install -d -o root -g root -m 0700 /var/lib/readegress

if [ "$autoload" = 1 ]; then
  mkdir -p "$etc/osquery"
  touch "$etc/osquery/extensions.load"
  grep -qxF "$ext" "$etc/osquery/extensions.load" || echo "$ext" >> "$etc/osquery/extensions.load"
fi

echo "readegress installed: $ext"
echo "Add these flags to osquery's flagfile (then restart osqueryd):"
sed -n '/^--/p' "$src/install/osquery.flags"
