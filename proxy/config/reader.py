"""Reading raw YAML values: ``${VAR}`` expansion, typed getters, ``*_file`` secrets, every problem kept.

A ``ConfigReader`` walks the parsed YAML for the section validators (``validate``). Each getter returns
the value, or records a ``ConfigProblem`` naming the key and returns a default, so one pass lists
everything that is wrong. Unknown keys get a did-you-mean. Environment values come in as a mapping
(``load`` passes ``os.environ``); secret files are read here and remembered for the reload watcher
and the config digest.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from yarl import URL

from proxy.config.model import Secret
from proxy.errors import ConfigProblem

_T = TypeVar("_T")
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``90s``, ``15m``, ``8h``, ``7d``, ``250ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 15m, 8h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError("must be a duration like 90s, 15m, 8h or 7d")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a positive whole number")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("must be a positive whole number") from None
    if number < 1:
        raise ValueError("must be a positive whole number")
    return number


class ConfigReader:
    """Walks the raw YAML, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.secret_files: list[str] = []
        self.secret_digests: list[str] = []
        self.missing_keys: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        if key not in self.missing_keys:
            self.problems.append(ConfigProblem(key, message))

    def fingerprint(self, secret: str) -> None:
        """Count a secret into the config digest, so that changing only the secret is a new version."""
        self.secret_digests.append(hashlib.sha256(secret.encode()).hexdigest())

    def expand(self, value: object, key: str) -> object:
        if isinstance(value, str):
            return self.expand_str(value, key)
        if isinstance(value, list):
            return [self.expand(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.expand(v, f"{key}.{k}") for k, v in value.items()}
        return value

    def expand_str(self, value: str, key: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name = m.group(1)
            if name not in self.environ:
                self.problem(key, f"environment variable {name} is not set")
                return ""
            return self.environ[name]

        return _VAR.sub(sub, value)

    def section(self, raw: Mapping[str, Any], key: str, allowed: set[str], prefix: str) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(prefix, "must be a mapping")
            return {}
        self.unknown(value, allowed, prefix + ".")
        return value

    def unknown(self, raw: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
        for k in raw:
            if k not in allowed:
                hint = _closest(str(k), allowed)
                self.problem(f"{prefix}{k}", "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))

    def get(
        self,
        raw: Mapping[str, Any],
        name: str,
        key: str,
        convert: Callable[[Any], _T],
        default: _T,
    ) -> _T:
        if name not in raw or raw[name] is None:
            return default
        try:
            return convert(self.expand(raw[name], key))
        except (ValueError, TypeError) as exc:
            self.problem(key, str(exc))
            return default

    def string(self, raw: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> str:
        value = raw.get(name)
        if value is None or value == "":
            if required:
                self.problem(key, "is required")
            return ""
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problem(key, "must be a string")
            return ""
        before = len(self.problems)
        expanded = str(self.expand(str(value), key))
        if len(self.problems) > before:
            # A missing ${VAR} was reported for this key; an empty result would only repeat it.
            self.missing_keys.add(key)
        return expanded

    def boolean(self, raw: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
        value = raw.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            value = self.expand(value, key)
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value

    def duration(self, raw: Mapping[str, Any], name: str, key: str, default: float) -> float:
        return self.get(raw, name, key, parse_duration, default)

    def string_list(self, raw: Mapping[str, Any], name: str, key: str) -> tuple[str, ...] | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, "must be a list of strings")
            return None
        return tuple(str(self.expand(v, f"{key}[{i}]")) for i, v in enumerate(value))

    def url(self, raw: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> URL | None:
        text = self.string(raw, name, key, required=required)
        if not text:
            return None
        try:
            url = URL(text)
        except ValueError:
            self.problem(key, f"{text!r} is not a valid URL")
            return None
        if url.scheme not in ("http", "https") or not url.host:
            self.problem(key, f"{text!r} must be an absolute http:// or https:// URL")
            return None
        if url.user or url.password:
            self.problem(key, "must not contain a user name or password")
            return None
        if url.query_string or url.fragment:
            self.problem(key, "must not have a query or fragment")
            return None
        return url

    def host_port(self, raw: Mapping[str, Any], name: str, key: str) -> tuple[str, int] | None:
        text = self.string(raw, name, key)
        if not text:
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            self.problem(key, f"{text!r} must be host:port, e.g. 0.0.0.0:4180")
            return None
        return (host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104

    def secret_file(self, path: str, key: str) -> str | None:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            self.problem(key, f"cannot read {path}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem(key, f"{path} is not UTF-8 text")
            return None
        self.secret_files.append(path)
        self.fingerprint(content)
        return content.removesuffix("\n").removesuffix("\r")

    def one_secret(
        self, s: Mapping[str, Any], name: str, section: str, *, required: bool
    ) -> tuple[Secret | None, str | None]:
        """``section.name`` or ``section.name_file`` (not both): the secret, and the file it came from."""
        key, file_key = f"{section}.{name}", f"{section}.{name}_file"
        value = self.string(s, name, key)
        path = self.string(s, f"{name}_file", file_key)
        if value and path:
            self.problem(key, f"set either {name} or {name}_file, not both")
            return None, None
        if path:
            content = self.secret_file(path, file_key)
            if content is not None and not content:
                self.problem(file_key, f"{path} is empty")
            return (Secret(content) if content else None), path
        if value:
            self.fingerprint(value)
            return Secret(value), None
        if required:
            self.problem(key, f"is required (or {name}_file)")
        return None, None


def _closest(word: str, candidates: set[str]) -> str | None:
    matches = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.75)
    return matches[0] if matches else None
