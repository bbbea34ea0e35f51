"""A directory updated the way kubelet updates a mounted ConfigMap or Secret volume, and a sidecar whose
config lives in one.

kubelet's atomic writer: the data goes into a new hidden directory ``..2026_01_31_12_00_00.123456789``;
a symlink ``..data_tmp`` to it is renamed over ``..data`` (one atomic step); each key is a symlink
``NAME -> ..data/NAME`` created once; the previous hidden directory is then removed. The files a program
opens are never written: only ``..data`` changes.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support.sidecar import Sidecar

_SEQ = itertools.count(1)


class ConfigMapDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, files: Mapping[str, str]) -> None:
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{next(_SEQ):09d}"
        payload = self.root / stamp
        payload.mkdir()
        for name, content in files.items():
            (payload / name).write_text(content, encoding="utf-8")
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.replace(tmp, data)  # rename(2): the swap is atomic
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for link in self.root.iterdir():
            if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
                link.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)


class ConfigMapSidecar(Sidecar):
    """A sidecar run with ``--config DIR/config.yaml`` inside a ConfigMap-style directory;
    ``write_config`` updates it by a ``..data`` swap."""

    def __init__(self, config: Mapping[str, Any], work_dir: str | os.PathLike[str], **kwargs: Any) -> None:
        self.configmap = ConfigMapDir(Path(work_dir) / "configmap")
        super().__init__(config, work_dir, **kwargs)

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def write_text(self, text: str) -> None:
        """Any text, e.g. broken YAML."""
        self.configmap.write({"config.yaml": text})
        self.config_path = self.configmap.path("config.yaml")
