"""The container image as a container: ``make test-image`` builds it (scripts/image.sh) and runs these tests.

They are not part of ``make test`` (pyproject's ``norecursedirs`` leaves this directory out). The image is
``$SSO_SIDECAR_IMAGE`` (default ``localhost/sso-sidecar:dev``, what ``scripts/image.sh build`` tags); a missing
image or podman fails the tests, it does not skip them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.containers import IMAGE, ContainerFactory, podman


@pytest.fixture(scope="session")
def image() -> str:
    assert shutil.which("podman"), "podman is not installed: run make test-image"
    conf = Path(os.environ["CONTAINERS_CONF"])
    assert conf.is_file(), f"CONTAINERS_CONF names {conf}, which does not exist"
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, f"no image {IMAGE}: run make test-image"
    return IMAGE


@pytest.fixture
def containers(image: str, tmp_path: Path) -> Iterator[ContainerFactory]:
    factory = ContainerFactory(image, tmp_path)
    yield factory
    factory.remove_all()
