"""The config file: read it, parse the YAML, validate every section, and fingerprint the result.

``load_settings`` either returns a complete, immutable ``Settings`` or raises ``ConfigError`` listing
every problem, each naming its key. This is the only module that reads the process environment.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from proxy.config import validate
from proxy.config.model import Settings
from proxy.config.reader import ConfigReader
from proxy.errors import ConfigError, ConfigProblem


def load_settings(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None, *, sso: Mapping[str, Any] | None = None
) -> Settings:
    """Read, expand and validate the config at ``path``; raise ``ConfigError`` with every problem.

    ``sso``: the settings page's section that replaces the file's (see ``parse_settings``)."""
    return parse_settings(_read(path), os.environ if environ is None else environ, source=str(path), sso=sso)


def load_public_url(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> URL:
    """Only what ``redirect-uri`` needs, checked as ``run`` checks it: works before any secret exists."""
    raw = _mapping(_read(path))
    reader = ConfigReader(os.environ if environ is None else environ)
    url = validate.parse_public_url(reader, raw)
    if reader.problems or url is None:
        raise ConfigError(reader.problems)
    return url


def peek_log_format(path: str | os.PathLike[str]) -> str:
    """The file's ``log_format`` read as well as it can be, for reporting a config that does not load."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "text"
    return "json" if isinstance(raw, dict) and raw.get("log_format") == "json" else "text"


def parse_settings(
    text: str, environ: Mapping[str, str], source: str = "", *, sso: Mapping[str, Any] | None = None
) -> Settings:
    """The config in ``text``; its digest covers the text and every secret, so a rotated secret is a new version.

    ``sso``, when given, replaces the file's whole ``sso:`` section (the settings page's, ``proxy.admin.sync``): it is
    validated exactly as the file's own would be. Its values are literal: a ``${VAR}`` typed into the page
    is not expanded, so a page can never read the process environment.
    """
    raw = _mapping(text)
    if sso is not None:
        raw = {**raw, "sso": _literal(sso)}
    reader = ConfigReader(environ)
    settings = validate.settings(reader, raw)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    digest_input = json.dumps(
        {"config": text, "secrets": sorted(reader.secret_digests), "page": sso}, sort_keys=True, default=str
    ).encode()
    return replace(
        settings,
        source=source,
        sso_source="file" if sso is None else "page",
        digest=hashlib.sha256(digest_input).hexdigest()[:16],
        secret_files=tuple(reader.secret_files),
    )


def read_text(path: str | os.PathLike[str]) -> str:
    """The config file's text (``ConfigError`` when it cannot be read), for composing with page settings."""
    return _read(path)


def _literal(value: Any) -> Any:
    """``value`` with every ``${`` escaped, so that expansion gives back exactly ``value``."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, list):
        return [_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("(file)", f"{path} is not UTF-8 text")]) from None


def _mapping(text: str) -> dict[str, Any]:
    """The YAML document; an empty one is an empty mapping, so each required key is named."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML: {_yaml_where(exc)}")]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("(file)", "must be a YAML mapping of keys to values")])
    return raw


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)
