"""Where the effective config comes from: the config file, with a layer over it (Pomerium's layered source).

The file is the base. A layer may replace its ``sso:`` section: the settings page's applied provider
(``proxy.admin.sync``) is one, and ``stack``s itself over the file at start. A reload reads the config
through the source (``load``), so it never needs to know what the layer is, and the page never needs to know
how a reload works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from proxy.config.load import load_settings
from proxy.config.model import Settings


class Layer(Protocol):
    """A source stacked over the config file."""

    def sso_over(self, file: Settings) -> Mapping[str, Any] | None:
        """The ``sso`` section that replaces the file's (``file``: the config file as it reads now), or None
        while the file's own applies."""

    def status(self) -> dict[str, Any]:
        """What the layer holds and where it stands, for ``/oauth2/status``."""


class ConfigSource:
    """The config file, and the layer over it, if any."""

    def __init__(self) -> None:
        self._layer: Layer | None = None

    @property
    def layer(self) -> Layer | None:
        return self._layer

    def stack(self, layer: Layer) -> None:
        """Put ``layer`` over the file: every ``load`` from now on reads through it."""
        self._layer = layer

    def load(self, path: str) -> Settings:
        """The effective config: the file at ``path``, its ``sso`` section replaced by the layer's when the
        layer has one. ``ConfigError`` (every problem, each naming its key) when it does not load."""
        settings = load_settings(path)
        sso = self._layer.sso_over(settings) if self._layer is not None else None
        return settings if sso is None else load_settings(path, sso=sso)
