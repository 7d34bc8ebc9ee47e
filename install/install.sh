#!/usr/bin/env bash
# Install readegress on a host that runs osqueryd (as root), or remove it.
#
#   sudo bash install/install.sh [--prefix DIR] [--ext FILE] [--no-autoload]
#   sudo bash install/install.sh --uninstall [--purge] [--prefix DIR]
#
# Every path lives under --prefix (default: none, i.e. /):
#   PREFIX/opt/readegress/readegress.ext   the single-file extension (install/build.sh);
#                                          osqueryd autoloads it only if it ends in .ext,
#                                          is a regular executable file owned by root, not
#                                          world-writable, in a directory without the
#                                          sticky bit: installed that way
#   PREFIX/etc/readegress/readegress.toml  the config (kept if present; state_dir set below)
#   PREFIX/var/lib/readegress              the extension's state (0700)
#   PREFIX/etc/osquery/extensions.load     lists the .ext (one path per line)
# Running it again changes nothing that is already right. It then prints the
# osquery flags readegress needs (install/osquery.flags).
#
#   --ext FILE      the readegress.ext to install (default: dist/readegress.ext,
#                   built with install/build.sh --no-deb when missing)
#   --no-autoload   do not touch extensions.load
#   --uninstall     remove the .ext and its extensions.load line
#   --purge         with --uninstall: also remove the config and the state
#   --help          this text
set -euo pipefail
prefix=""
ext_src=""
autoload=1
uninstall=0
purge=0
usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --prefix) [ "$#" -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }
              prefix="${2%/}"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; prefix="${prefix%/}"; shift ;;
    --ext) [ "$#" -ge 2 ] || { echo "install.sh: --ext needs a file" >&2; exit 2; }
           ext_src="$2"; shift 2 ;;
    --no-autoload) autoload=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$prefix" ] && [ "${prefix#/}" = "$prefix" ]; then
  echo "install.sh: --prefix must be an absolute path" >&2; exit 2
fi
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
  echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (osqueryd only autoloads root-owned extensions)" >&2
  exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
libdir="$prefix/opt/readegress"
ext="$libdir/readegress.ext"
confdir="$prefix/etc/readegress"
config="$confdir/readegress.toml"
state="$prefix/var/lib/readegress"
load="$prefix/etc/osquery/extensions.load"
umask 022

drop_autoload_line() {
  [ -f "$load" ] || return 0
  if grep -qxF "$ext" "$load"; then
    grep -vxF "$ext" "$load" > "$load.readegress-tmp" || true
    cat "$load.readegress-tmp" > "$load"
    rm -f "$load.readegress-tmp"
    echo "removed $ext from $load"
  fi
}

if [ "$uninstall" = 1 ]; then
  drop_autoload_line
  if [ -e "$ext" ]; then rm -f "$ext"; echo "removed $ext"; fi
  rmdir "$libdir" 2>/dev/null || true
  if [ "$purge" = 1 ]; then
    if [ -e "$confdir" ]; then rm -rf "$confdir"; echo "removed $confdir"; fi
    if [ -e "$state" ]; then rm -rf "$state"; echo "removed $state"; fi
  fi
  echo "readegress uninstalled (restart osqueryd to unload a running extension)"
  exit 0
fi

if [ -z "$ext_src" ]; then
  ext_src="$src/dist/readegress.ext"
  if [ ! -f "$ext_src" ]; then
    echo "install.sh: building $ext_src (install/build.sh --no-deb)" >&2
    bash "$src/install/build.sh" --no-deb >&2
  fi
fi
if [ ! -f "$ext_src" ]; then
  echo "install.sh: $ext_src: no such file (build it with install/build.sh)" >&2; exit 2
fi

install -d -o root -g root -m 0755 "$libdir"
if ! cmp -s "$ext_src" "$ext"; then
  install -o root -g root -m 0755 "$ext_src" "$ext.tmp"
  mv -f "$ext.tmp" "$ext"
  echo "installed $ext"
fi
chown root:root "$ext"
chmod 0755 "$ext"

install -d -o root -g root -m 0755 "$confdir"
if [ ! -e "$config" ]; then
  # The shipped default, with the state directory under the prefix.
  sed "s|^state_dir = .*|state_dir = \"$state\"|" \
    "$src/extension/readegress/detect/default.toml" > "$config.tmp"
  chown root:root "$config.tmp"
  chmod 0644 "$config.tmp"
  mv -f "$config.tmp" "$config"
  echo "installed $config"
fi
install -d -o root -g root -m 0700 "$state"

if [ "$autoload" = 1 ]; then
  install -d -m 0755 "$(dirname "$load")"
  [ -e "$load" ] || : > "$load"
  if ! grep -qxF "$ext" "$load"; then
    echo "$ext" >> "$load"
    echo "listed $ext in $load"
  fi
fi

echo "readegress installed: $ext"
echo "Add these flags to osqueryd's flagfile (then restart osqueryd):"
sed -n '/^--/p' "$src/install/osquery.flags" \
  | sed "s|^--extensions_autoload=.*|--extensions_autoload=$load|"
echo "Check the host with: $ext doctor --extensions-load $load --config $config"
