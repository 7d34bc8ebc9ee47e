"""Build the table environment with its config and detection service.

The extension (``readegress extension --config F --state-dir D``) and
``readegress query`` share this: the config is loaded from the root-owned file
(or the shipped default), the state directory comes from the flag or the
config — never from data. A config that cannot be used does not stop the
tables: the environment then has no service, and ``readegress_health`` shows
every problem with the file and line.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

from readegress.detect.config import ConfigError, load_config
from readegress.tables.base import TableEnv

if TYPE_CHECKING:
    from readegress.service.detection_service import DetectionService

log = logging.getLogger("readegress.service")


def open_environment(
    config_path: Optional[str] = None,
    *,
    state_dir: Optional[str] = None,
    background: bool = True,
    offline: bool = False,
) -> TableEnv:
    """A :class:`TableEnv` with ``config`` and (config permitting) ``service``.

    ``offline`` (``readegress query``): the service only reads the state the
    extension saved, never polls or writes. Otherwise the service is ready and
    starts polling when :meth:`TableEnv.attach_manager` hands it the core.
    """
    problems: list[str] = []
    config = None
    try:
        config = load_config(config_path)
    except ConfigError as e:
        problems.extend(e.problems)
    if state_dir is not None and not os.path.isabs(state_dir):
        problems.append(f"--state-dir {state_dir!r} must be an absolute path")
    env = TableEnv(background=background, config=config)
    env.config_path = (
        os.path.abspath(config_path) if config_path else (config.path if config else "")
    )
    env.config_problems = tuple(problems)
    for p in problems:
        log.error("config: %s", p)
    if config is not None and not problems:
        cfg = config

        def build() -> DetectionService:
            # Imported here: the service costs ~0.1 s of imports that a
            # `readegress query` of socket_bytes should not pay.
            from readegress.service.detection_service import DetectionService

            service = DetectionService(
                cfg,
                env,
                state_dir=state_dir,
                persist=not offline,
                monitor_interval=env.poll_interval,
            )
            service.open()
            return service

        if offline:
            env.service_factory = build
        else:
            service = build()
            env.service = service
            if "native" in cfg.sources and background:
                attach_native(service, env)
    return env


def attach_native(service: DetectionService, env: Optional[TableEnv] = None) -> bool:
    """Start the native sources (fanotify + sock_diag) and feed them to ``service``.

    The service thread starts now (the native sources need no osquery core);
    the osquery source, when configured too, joins once the extension is
    registered. A source that cannot start (not root, no fanotify) is logged,
    noted in ``env.warnings`` and shown by ``readegress_health``; osquery's
    source keeps working. Returns whether the native sources run.
    """
    from readegress.sources.native import NativeSources

    native = NativeSources(service.config, service.host)
    service.attach_native(native)
    try:
        native.start()
    except OSError as e:
        msg = f"the native source cannot run: {native.error or e}"
        log.error("%s", msg)
        if env is not None:
            env.warn(msg)
        return False
    service.start()
    return True
