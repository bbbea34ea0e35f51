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

import yaml
from yarl import URL

from proxy import validate
from proxy.configreader import ConfigReader
from proxy.errors import ConfigError, ConfigProblem
from proxy.settings import Settings


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the config at ``path``; raise ``ConfigError`` with every problem."""
    env = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("(file)", f"{path} is not UTF-8 text")]) from None
    return parse_settings(text, env, source=str(path))


def load_public_url(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> URL:
    """Only what ``redirect-uri`` needs: works before any secret exists."""
    env = os.environ if environ is None else environ
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML: {_yaml_where(exc)}")]) from None
    reader = ConfigReader(env)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("(file)", "must be a YAML mapping")])
    url = reader.url(raw, "public_url", "public_url", required=True)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert url is not None
    return url


def parse_settings(text: str, environ: Mapping[str, str], source: str = "") -> Settings:
    """The config in ``text``; its digest covers the text and every secret, so a rotated secret is a new version."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML: {_yaml_where(exc)}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("(file)", "must be a YAML mapping of keys to values")])
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


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)
