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

from proxy import validate
from proxy.configreader import ConfigReader
from proxy.errors import ConfigError, ConfigProblem
from proxy.settings import Settings


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the config at ``path``; raise ``ConfigError`` with every problem."""
    return parse_settings(_read(path), os.environ if environ is None else environ, source=str(path))


def load_public_url(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> URL:
    """Only what ``redirect-uri`` needs, checked as ``run`` checks it: works before any secret exists."""
    raw = _mapping(_read(path))
    reader = ConfigReader(os.environ if environ is None else environ)
    url = validate.parse_public_url(reader, raw)
    if reader.problems or url is None:
        raise ConfigError(reader.problems)
    return url


def parse_settings(text: str, environ: Mapping[str, str], source: str = "") -> Settings:
    """The config in ``text``; its digest covers the text and every secret, so a rotated secret is a new version."""
    raw = _mapping(text)
    reader = ConfigReader(environ)
    settings = validate.settings(reader, raw)
    if reader.problems or settings is None:
        raise ConfigError(reader.problems)
    digest_input = json.dumps({"config": text, "secrets": sorted(reader.secret_digests)}, sort_keys=True).encode()
    return replace(
        settings,
        source=source,
        digest=hashlib.sha256(digest_input).hexdigest()[:16],
        secret_files=tuple(reader.secret_files),
    )


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
