"""The dependency lock (requirements/): the venv holds exactly it, the image's part agrees with it, and it still
satisfies what pyproject.toml asks for. See requirements/README.md for how the lock is made and upgraded."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from support import REPO
from support.locks import LOCKS, pins_for, read_lock


def test_read_lock_refuses_an_unpinned_or_unhashed_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("redis>=5 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="not pinned"):
        read_lock(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("redis==8.2.0\n")
    with pytest.raises(AssertionError, match="no hash"):
        read_lock(tmp_path / "b.txt")


def installed() -> dict[str, str]:
    """Every distribution in this venv but the sidecar itself (installed editable from the checkout)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        found[canonicalize_name(name)] = version
    return found


def test_the_venv_holds_exactly_the_lock() -> None:
    """pip list in the venv is the lock (requirements/dev.txt) for this interpreter and platform: nothing more,
    nothing less, no other version. make install builds the venv anew from the lock whenever it changes."""
    locked = {name: pin.version for name, pin in pins_for(LOCKS / "dev.txt").items()}
    have = installed()
    assert have == locked, (
        f"only in the venv: {sorted(set(have.items()) - set(locked.items()))}; "
        f"only in the lock: {sorted(set(locked.items()) - set(have.items()))} (rm -rf .venv && make install)"
    )


def test_the_image_lock_is_the_same_pins_as_the_dev_lock() -> None:
    """requirements/image.txt (what the Dockerfile installs) takes every version and hash from the one lock."""
    dev = {(pin.name, pin.version): pin.hashes for pin in read_lock(LOCKS / "dev.txt")}
    for pin in read_lock(LOCKS / "image.txt"):
        assert (pin.name, pin.version) in dev, f"image.txt pins {pin.name}=={pin.version}, which dev.txt does not"
        assert pin.hashes == dev[pin.name, pin.version], f"{pin.name}=={pin.version}: hashes differ from dev.txt"


def _asked_for(source: str) -> list[Requirement]:
    """The requirements of pyproject.toml's dependencies, its dev extra, or a requirements/*.in file."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if source == "dependencies":
        lines = project["dependencies"]
    elif source == "dev":
        lines = project["optional-dependencies"]["dev"]
    else:
        lines = [line.split("#", 1)[0].strip() for line in (LOCKS / source).read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


@pytest.mark.parametrize(
    ("lock", "source"),
    [
        ("dev.txt", "dependencies"),
        ("dev.txt", "dev"),
        ("dev.txt", "tools.in"),
        ("image.txt", "dependencies"),
        ("image.txt", "tools.in"),
        ("checkov.txt", "checkov.in"),
    ],
)
def test_the_lock_satisfies_what_the_project_asks_for(lock: str, source: str) -> None:
    """A requirement added to or tightened in pyproject.toml (or requirements/*.in) without make lock fails
    here, on any machine, instead of installing something the lock never held."""
    pins = pins_for(LOCKS / lock)
    for requirement in _asked_for(source):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is asked for but {lock} does not hold {name}: run make lock UPGRADE=none"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock} pins {name}=={pins[name].version}, outside {requirement}: run make lock UPGRADE={name}"
        )
