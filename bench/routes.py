"""``--routes N``: a sidecar variant whose config carries N routes, to measure what routes cost a request.

The first N-1 routes never match the benchmark's path (``/``), so each request searches every one of their
regexes first: the cost of the routes a request passes before the one it hits. Half are anchored at the start
(``^/admin-0(/|$)``), half searched anywhere (``/internal-1/``), the two shapes operators write; none lists
methods, which would let a GET skip its regex. The last route matches every path with an access block of its
own that admits anyone who signs in, as the other variants' top-level access does: the figures are the
routes' cost, not an access policy's. The others refuse the benchmark's users: a sidecar that answers ``probe``
with 403 has applied the table (``Bench.check_routes``).
"""

from __future__ import annotations

from typing import Any

PREFIX = "sidecar-routes"


def name(count: int) -> str:
    return f"{PREFIX}{count}"


def table(count: int) -> list[dict[str, Any]]:
    """The ``routes:`` of the variant: ``count - 1`` that never match ``/``, then one that matches it."""
    never = [
        {"path": f"^/admin-{i}(/|$)" if i % 2 == 0 else f"/internal-{i}/", "access": {"allowed_groups": ["nobody"]}}
        for i in range(count - 1)
    ]
    return [*never, {"path": "^/", "access": {}}]


def probe(count: int) -> str | None:
    """A path of the first route, which refuses the benchmark's users; None with a single route."""
    return "/admin-0/" if count > 1 else None
