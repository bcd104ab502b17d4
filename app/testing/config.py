"""Writing a tiergate config file (``TIERGATE_CONFIG``) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_config(
    path: Path,
    models: list[dict[str, Any]],
    limits: dict[str, Any] | None = None,
    *,
    webhooks: dict[str, Any] | None = None,
) -> Path:
    """Write a config file with these ``models`` and ``limits`` to ``path``; return ``path``.

    ``models`` are the entries of the ``models:`` list, ``limits`` the ``limits:`` mapping
    (left out when ``None`` or empty), ``webhooks`` the ``webhooks:`` mapping (left out when
    ``None``), with the keys the README's "Configuration" documents
    (``app.settings.ModelConfig``, ``Limits``, ``WebhooksConfig``). The parent directory is
    created.
    """
    data: dict[str, Any] = {"models": models}
    if limits:
        data["limits"] = limits
    if webhooks is not None:
        data["webhooks"] = webhooks
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
