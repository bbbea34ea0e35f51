"""The dependency lock's files (requirements/*.txt), read as pins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCKS = Path(__file__).resolve().parents[2] / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: frozenset[str]

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def read_lock(path: Path) -> list[Pin]:
    """The pins of a hashed requirements file as ``uv pip compile --universal --generate-hashes`` writes it. A
    universal lock may pin a package twice, under markers that exclude each other (one version below Python
    3.12, another from it)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    pins: list[Pin] = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        hashes = frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
        spec = re.sub(r"\s*--hash=\S+", "", line).strip()
        requirement = Requirement(spec)
        (operator_version,) = requirement.specifier
        assert operator_version.operator == "==", f"{path.name}: {spec} is not pinned with =="
        assert hashes, f"{path.name}: {requirement.name} has no hash"
        name = canonicalize_name(requirement.name)
        pins.append(Pin(name, operator_version.version, requirement.marker, hashes))
    return pins


def pins_for(path: Path, environment: dict[str, str] | None = None) -> dict[str, Pin]:
    """The pins of ``path`` that apply in ``environment`` (default: this interpreter), one per package."""
    chosen: dict[str, Pin] = {}
    for pin in read_lock(path):
        if pin.applies(environment):
            assert pin.name not in chosen, f"{path.name}: two pins of {pin.name} apply at once"
            chosen[pin.name] = pin
    return chosen
