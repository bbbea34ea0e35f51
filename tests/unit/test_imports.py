"""Every module of ``proxy`` imports alone, first, in an interpreter that has imported nothing of ``proxy``.

An import cycle, or a module that works only after another one happened to be imported, fails here with the
module's name (as aiohttp's tests/test_circular_imports.py does). ``make lint`` (lint-imports) checks the
layer rule and cycles from the source; this checks what Python actually does.

One fresh interpreter imports the third-party libraries the sidecar uses (they are not ours, and importing
them again for every module would take most of a minute), then forks once per module: each child imports its
one module with warnings as errors, with nothing of ``proxy`` loaded before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import proxy

PACKAGE = Path(proxy.__file__).parent
# Running proxy.__main__ is running the CLI (``python -m proxy``): the CLI tests start it that way.
NOT_IMPORTED = {"proxy.__main__"}
THIRD_PARTY = [
    "aiohttp",
    "aiohttp.web",
    "cryptography.hazmat.primitives.ciphers.aead",
    "hiredis",
    "httptools",
    "itsdangerous",
    "joserfc.jwt",
    "multidict",
    "prometheus_client",
    "redis.asyncio",
    "uvloop",
    "yaml",
    "yarl",
]
CHILDREN = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback, warnings
    warnings.simplefilter("error")
    for name in json.loads(sys.argv[1]):
        importlib.import_module(name)
    if [m for m in sys.modules if m == "proxy" or m.startswith("proxy.")]:
        raise SystemExit("a third-party library imported proxy")
    results = {}
    for name in json.loads(sys.argv[2]):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(name)
                problem = ""
            except BaseException:
                problem = traceback.format_exc()
            os.write(write, problem.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            results[name] = pipe.read().decode()
        os.waitpid(pid, 0)
    print(json.dumps(results))
    """
)


def modules() -> list[str]:
    """Every module and package of ``proxy``, read from the tree (importing them here would defeat the test)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name not in NOT_IMPORTED]


@pytest.fixture(scope="module")
def imported_alone() -> dict[str, str]:
    """Each module's traceback when importing it alone failed, else an empty string."""
    done = subprocess.run(
        [sys.executable, "-c", CHILDREN, json.dumps(THIRD_PARTY), json.dumps(modules())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    return results


def test_every_module_is_found() -> None:
    found = modules()
    assert {"proxy", "proxy.app", "proxy.upstream.h1.exchange", "proxy.admin.handlers"} <= set(found)
    assert len(found) == len(list(PACKAGE.rglob("*.py"))) - len(NOT_IMPORTED)


@pytest.mark.parametrize("module", modules())
def test_the_module_imports_alone(module: str, imported_alone: dict[str, str]) -> None:
    assert imported_alone[module] == "", imported_alone[module]
