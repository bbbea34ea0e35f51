"""Test infrastructure: real processes (redis-server, the dev identity provider, the sample console and the
sidecar through its CLI), started on free loopback ports with their output captured to temp files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
