"""Entry point of the single-file ``readegress.ext`` (``install/build.sh``).

osqueryd launches an autoloaded extension as ``EXT --socket PATH --timeout N
--interval N [--verbose]``: flags only, so that runs ``readegress extension``.
A first argument that is a readegress subcommand (``doctor``, ``query``,
``file-paths``, ...) runs that subcommand instead, so a host with only the
``.ext`` can run its pre-flight: ``readegress.ext doctor``.

The config, unless ``--config`` is given: ``readegress.toml`` in
``<prefix>/etc/readegress/`` where the ``.ext`` sits in
``<prefix>/opt/readegress/`` (``install/install.sh --prefix``), else
``/etc/readegress/readegress.toml`` (the ``.deb``), else the shipped default.
The extension's own owner and mode checks apply to whichever is used.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

SYSTEM_CONFIG = "/etc/readegress/readegress.toml"


def default_config(ext_path: str) -> str | None:
    """The config this ``.ext`` uses when osqueryd passes none (see the module doc)."""
    here = os.path.dirname(os.path.realpath(ext_path))
    beside_prefix = os.path.join(os.path.dirname(os.path.dirname(here)), "etc", "readegress")
    for candidate in (os.path.join(beside_prefix, "readegress.toml"), SYSTEM_CONFIG):
        if os.path.isfile(candidate):
            return candidate
    return None


def _read_default_config_from_the_zip() -> None:
    """Point the shipped default config into the zip this code runs from.

    ``DEFAULT_CONFIG`` is a path beside ``config.py``; inside a zipapp that
    path names a zip member, which ``open()`` cannot read. ``zipfile.Path``
    reads it (``read_bytes()``) and prints the same string, so the config
    loader needs no change.
    """
    import zipfile

    from readegress.detect import config

    default = str(config.DEFAULT_CONFIG)
    archive = os.path.dirname(default)
    while archive and archive != os.path.dirname(archive) and not os.path.isfile(archive):
        archive = os.path.dirname(archive)
    if not os.path.isfile(archive) or not zipfile.is_zipfile(archive):
        return  # an ordinary install: the file is on disk
    member = os.path.relpath(default, archive)
    config.DEFAULT_CONFIG = zipfile.Path(archive, member)  # type: ignore[assignment]


def main(argv: Sequence[str] | None = None, ext_path: str | None = None) -> int:
    from readegress.cli import main as cli_main

    _read_default_config_from_the_zip()

    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-"):
        try:
            return cli_main(args)
        except ModuleNotFoundError as e:
            # The single-file build carries pure Python only (zipimport cannot
            # load C extensions): apsw, the embedded SQLite engine, is left out.
            print(
                f"readegress.ext: {args[0]} needs the {e.name} module, which the single-file"
                " build leaves out; install the readegress Python package for it",
                file=sys.stderr,
            )
            return 2
    config = default_config(ext_path or sys.argv[0])
    has_config = any(a == "--config" or a.startswith("--config=") for a in args)
    if config is not None and not has_config:
        args += ["--config", config]
    return cli_main(["extension", *args])
