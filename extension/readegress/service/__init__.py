"""The detection service: the osquery source, the correlation core, settling, persistence.

- :class:`~readegress.service.detection_service.DetectionService` — runs it all on
  one background thread.
- :func:`open_environment` — the shared :class:`~readegress.tables.base.TableEnv`
  with config and service, as the extension and ``readegress query`` build it.
"""

from readegress.service.environment import open_environment

__all__ = ["open_environment"]
