"""The documentation holds together: every relative link and anchor in the repository's Markdown leads
somewhere, and the README's minimal config is a valid config with the defaults the README says it has."""

from __future__ import annotations

import re
import secrets
from collections import Counter
from pathlib import Path

import pytest

from proxy.config.load import parse_settings
from support import REPO

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def markdown_files() -> list[Path]:
    """The repository's own Markdown: not in hidden directories (.venv, .git) or node_modules."""
    return sorted(
        p
        for p in REPO.rglob("*.md")
        if not any(part.startswith(".") or part == "node_modules" for part in p.relative_to(REPO).parts)
    )


def prose(text: str) -> str:
    """The text outside fenced code blocks, where a `#` starts a comment, not a heading."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (code spans and links reduced to their text), lower-cased,
    punctuation other than `-` and `_` dropped, each space a `-`."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: Counter[str] = Counter()
    for heading in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def test_the_slug_rule_matches_githubs_for_the_headings_the_docs_use():
    assert slug("Paths and `skip_auth`") == "paths-and-skip_auth"
    assert slug("Forward auth (nginx, Traefik)") == "forward-auth-nginx-traefik"
    assert slug("The page's own origin") == "the-pages-own-origin"
    assert slug("Migration: `status.admin_groups` → `admin.groups`") == "migration-statusadmin_groups--admingroups"
    assert slug("New vs old: `--baseline REF_OR_PATH`") == "new-vs-old---baseline-ref_or_path"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_leads_somewhere(path):
    broken = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file or directory")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{path.relative_to(REPO)}:\n" + "\n".join(broken)


def test_the_docs_pages_are_linked_from_the_readme():
    readme = prose((REPO / "README.md").read_text(encoding="utf-8"))
    linked = {Path(t.partition("#")[0]) for t in LINK.findall(readme)}
    pages = {p.relative_to(REPO) for p in (REPO / "docs").glob("*.md")}
    assert pages and pages <= linked, pages - linked


def test_the_readmes_minimal_config_is_valid_with_the_defaults_it_names():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A minimal config", 1)[1]
    config = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert config is not None
    env = {"OIDC_CLIENT_SECRET": "s", "COOKIE_SECRET": secrets.token_urlsafe(32)}
    settings = parse_settings(config.group(1), env)
    assert (settings.listen_host, settings.listen_port) == ("0.0.0.0", 4180)
    assert settings.session.store == "memory"
    assert [header for header, _ in settings.headers] == [
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Given-Name",
        "X-Forwarded-Family-Name",
        "X-Forwarded-Name",
        "X-Forwarded-Groups",
    ]


def test_the_image_tests_and_the_image_script_name_a_podman_config_that_exists() -> None:
    """scripts/image.sh and tests/support/containers.py each default CONTAINERS_CONF to a path in the tree: when
    a move leaves one behind, podman fails on every command and the image tests read it as a missing image."""
    script = (REPO / "scripts" / "image.sh").read_text()
    support = (REPO / "tests" / "support" / "containers.py").read_text()
    named = re.search(r'CONTAINERS_CONF:-\$PWD/([^}"]+)', script)
    assert named, "scripts/image.sh no longer defaults CONTAINERS_CONF"
    assert (REPO / named.group(1)).is_file(), f"scripts/image.sh names {named.group(1)}, which does not exist"
    parts = re.search(r'"CONTAINERS_CONF", str\(REPO((?: / "[^"]+")+)\)', support)
    assert parts, "tests/support/containers.py no longer defaults CONTAINERS_CONF"
    path = REPO.joinpath(*re.findall(r'"([^"]+)"', parts.group(1)))
    assert path.is_file(), f"tests/support/containers.py names {path}, which does not exist"
