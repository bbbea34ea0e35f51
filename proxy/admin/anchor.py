"""This replica's own memory of the settings page's record, kept where the page store cannot reach it.

The record (``proxy.admin.record``) is sealed, so nobody without a cookie secret can forge one; but every record
ever written stays a valid seal, so whoever can write to the store (Redis, or the settings file) could put
an older one back, or delete it, and a replica that knows nothing else would apply what it finds. The
anchor is what it knows: a small file (``admin.state_file``, default beside ``admin.settings_file``) that
holds

- ``version``: the newest record version this replica (any of its workers) has accepted. A stored record
  below it is a replayed or restored copy and is refused (``proxy.admin.sync``);
- ``expected``: whether that record replaces the config file's ``sso`` section (Enable or Disable on the
  page), so that an emptied store means "closed", never "back to the file";
- ``pinned``: the provider last enabled, which break-glass may enable again (and no other).

Only ever raised, never lowered, under a lock shared by the workers; written atomically with mode 0600.
Going back is an operator's explicit act: "Forget page settings" writes a newer record, and deleting this
file (with the replica stopped) makes it trust the store again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

from proxy.admin.record import Pinned
from proxy.admin.store import exposure, locked, write_atomically
from proxy.errors import StoreUnavailable

FORMAT = 1


class AnchorError(Exception):
    """The anchor file exists but cannot be read or does not parse: the replica cannot know what it saw."""


@dataclass(frozen=True)
class Anchor:
    version: int = 0  # 0: this replica has accepted no record yet
    expected: bool = False  # the record at ``version`` replaces the file's sso section
    pinned: Pinned | None = None
    at: float = 0.0

    def to_json(self) -> bytes:
        pinned = None if self.pinned is None else {"issuer_url": self.pinned.issuer_url,
                                                   "client_id": self.pinned.client_id}  # fmt: skip
        body = {"format": FORMAT, "version": self.version, "expected": self.expected, "pinned": pinned, "at": self.at}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Anchor:
        try:
            doc = json.loads(raw)
            version, pinned = doc["version"], doc.get("pinned")
            if doc["format"] != FORMAT or not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError("unknown format")
            return cls(
                version=version,
                expected=doc["expected"] is True,
                pinned=None if pinned is None else Pinned(str(pinned["issuer_url"]), str(pinned["client_id"])),
                at=float(doc.get("at", 0.0)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AnchorError("it is not a page-settings state file") from exc


class AnchorFile:
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    async def read(self) -> Anchor:
        """The anchor, ``Anchor()`` when there is none yet; ``AnchorError`` when it cannot be used."""
        return await asyncio.to_thread(self._read)

    async def raise_to(self, anchor: Anchor) -> Anchor:
        """Store ``anchor`` unless the file already holds a newer version; the anchor now stored."""
        return await asyncio.to_thread(self._raise_to, anchor)

    def exposure(self) -> str | None:
        return exposure(self.path)

    def _read(self) -> Anchor:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Anchor()
        except OSError as exc:
            raise AnchorError(f"it cannot be read ({exc.strerror or exc})") from None
        return Anchor.from_json(raw)

    def _raise_to(self, anchor: Anchor) -> Anchor:
        try:
            with locked(self.path):
                current = self._read()
                if current.version >= anchor.version:
                    return current  # another worker got there first, or this is no news
                write_atomically(self.path, anchor.to_json(), f"The page-settings state file {self.path}")
                return anchor
        except StoreUnavailable as exc:
            raise AnchorError(exc.message) from None


def anchor_for(version: int, expected: bool, pinned: Pinned | None) -> Anchor:
    return Anchor(version=version, expected=expected, pinned=pinned, at=time.time())
