"""``--baseline REF_OR_PATH``: the sidecar of another source tree, run next to the working tree's.

A git ref (commit, tag, ``HEAD~1``, ``main``) is checked out into a temporary ``git worktree add
--detach`` that ``cleanup()`` removes again; a path is another checkout, used as it is. The baseline's
sidecar runs from that tree:

- with ``TREE/.venv/bin/sso-sidecar`` when the tree has a venv of its own (its own dependencies);
- otherwise with ``python -m proxy`` on this checkout's interpreter, in ``TREE`` with ``PYTHONPATH=TREE``.

This checkout's venv has an editable install of its own ``proxy/``, and the current directory comes first
on ``sys.path``: a baseline started the wrong way would silently run the working tree. So before anything
starts, a probe run exactly like the sidecar (interpreter, working directory, environment, first
``sys.path`` entry) imports ``proxy`` and ``proxy.cli`` and says from where; a file outside the tree it
should be is an error. The same probe checks the working tree's sidecar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _paths
from stack import SidecarSource, working_tree_source

# Run with -c, so sys.path[0] is '' (the working directory) as it is for ``-m``; a console script's first
# entry is its own directory instead, which the caller substitutes.
# It also says which interpreter runs the sidecar, and how it was built: the same code runs ~15 % faster on Debian's
# python3.11 (libpython linked into the executable, an optimised build) than on a build with libpython as a shared
# library and no --enable-optimizations (pyenv's default), so a figure means little without it.
PROBE = """\
import json, os, sys, sysconfig
{fix}
import proxy, proxy.cli
maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
print("BENCH_PROBE " + json.dumps({{
    "proxy": proxy.__file__, "cli": proxy.cli.__file__, "version": getattr(proxy, "__version__", "?"),
    "python": sys.executable, "python_version": sys.version.split()[0],
    "interpreter": os.path.realpath(sys.executable),
    "libpython": "shared library" if "/libpython" in maps else "linked in" if maps else "?",
    "configure": sysconfig.get_config_var("CONFIG_ARGS") or "",
}}))
"""


class BaselineError(RuntimeError):
    """The baseline cannot be run (or would run the wrong source); the message says why."""


def git(*args: str, cwd: Path = _paths.REPO) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {(out.stderr or out.stdout).strip()}")
    return out.stdout.strip()


def _git_info(tree: Path) -> dict[str, Any]:
    """Commit and uncommitted changes (under proxy/ and pyproject.toml) of a checkout, if it is one."""
    try:
        head = git("log", "-1", "--format=%h %s", cwd=tree)
        dirty = git("status", "--porcelain", "--", "proxy", "pyproject.toml", cwd=tree).splitlines()
    except (BaselineError, OSError):
        return {}
    return {"head": head, "uncommitted_under_proxy": len(dirty)}


def _dependencies(tree: Path) -> list[str]:
    try:
        data = tomllib.loads((tree / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return sorted(data.get("project", {}).get("dependencies", []))


def _venv_python(script: Path) -> Path:
    """The interpreter of a console script (its shebang), else its venv's ``python``."""
    try:
        first = script.read_text(errors="replace").split("\n", 1)[0]
    except OSError:
        first = ""
    if first.startswith("#!") and Path(first[2:].strip()).exists():
        return Path(first[2:].strip())
    return script.parent / "python"


def _current_python() -> Path:
    venv = _paths.REPO / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)


def probe(source: SidecarSource) -> dict[str, Any]:
    """Import ``proxy`` the way ``source`` will run it; raise unless it comes from ``source.tree``."""
    if len(source.command) == 1:  # a console script: sys.path[0] is the script's directory
        python = _venv_python(Path(source.command[0]))
        fix = f"sys.path[0] = {str(Path(source.command[0]).parent)!r}"
    else:
        python, fix = Path(source.command[0]), ""
    env = {**os.environ, **source.env}
    try:
        out = subprocess.run(
            [str(python), "-c", PROBE.format(fix=fix)],
            cwd=source.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineError(f"{source.label} sidecar ({source.how}): the import probe did not run: {exc}") from None
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_PROBE ")), None)
    if out.returncode != 0 or line is None:
        raise BaselineError(
            f"the {source.label} sidecar ({source.how}) cannot import its code with {python}:\n"
            f"{(out.stderr or out.stdout).strip()[-3000:]}"
        )
    found: dict[str, Any] = json.loads(line.removeprefix("BENCH_PROBE "))
    wanted = (source.tree / "proxy").resolve()
    for key in ("proxy", "cli"):
        got = Path(found[key]).resolve()
        if not got.is_relative_to(wanted):
            raise BaselineError(
                f"the {source.label} sidecar ({source.how}) would import {got}, not the tree under test "
                f"({wanted}): it would run the wrong code. (A venv with a non-editable install, or one installed "
                "from another checkout, does this; give the tree a venv of its own with `pip install -e TREE`.)"
            )
    return found


@dataclass
class Baseline:
    """The baseline source tree (and the worktree made for it, if any)."""

    spec: str
    tree: Path
    source: SidecarSource
    info: dict[str, Any] = field(default_factory=dict)
    worktree: Path | None = None

    def hint(self) -> str:
        """What to do when the baseline does not run on this venv's packages."""
        differ = self.info.get("dependencies_differ")
        lines = [f"Its pyproject.toml lists other dependencies than this checkout's: {differ}."] if differ else []
        if len(self.source.command) == 1:  # it has a venv of its own already
            return "\n".join([*lines, f"Check its venv ({self.source.command[0]})."])
        if self.worktree is None:
            how = f"python3 -m venv {self.tree}/.venv && {self.tree}/.venv/bin/pip install -e {self.tree}"
        else:
            how = (
                f"git worktree add --detach DIR {self.spec} && python3 -m venv DIR/.venv && "
                "DIR/.venv/bin/pip install -e DIR, then run with --baseline DIR"
            )
        return "\n".join([*lines, f"To run it with its own dependencies, give it a venv of its own: {how}"])

    def cleanup(self) -> None:
        """Remove the temporary worktree (``git worktree remove``); a path baseline is left alone."""
        if self.worktree is None:
            return
        try:
            git("worktree", "remove", "--force", str(self.worktree))
        except BaselineError as exc:
            print(f"removing worktree {self.worktree}: {exc}", file=sys.stderr)
            shutil.rmtree(self.worktree, ignore_errors=True)
            subprocess.run(["git", "worktree", "prune"], cwd=_paths.REPO, capture_output=True)
        self.worktree = None


def resolve(spec: str, work: Path) -> Baseline:
    """A directory is another checkout; anything else must be a git ref of this repository, which is checked
    out (detached) under ``work``."""
    path = Path(spec).expanduser()
    worktree = None
    if path.is_dir():
        tree = path.resolve()
        info: dict[str, Any] = {"kind": "path", "tree": str(tree), **_git_info(tree)}
    else:
        try:
            commit = git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}")
        except BaselineError:
            raise BaselineError(
                f"--baseline {spec}: neither a directory nor a commit of {_paths.REPO} (git rev-parse found nothing)"
            ) from None
        worktree = work / "baseline-src"
        git("worktree", "add", "--detach", "--quiet", str(worktree), commit)
        tree = worktree
        info = {"kind": "git ref", "ref": spec, "commit": commit, "tree": str(tree), **_git_info(tree)}
    baseline = Baseline(spec, tree, SidecarSource("old", tree, (), tree), info, worktree)
    try:
        if not (tree / "proxy" / "__init__.py").exists():
            raise BaselineError(f"--baseline {spec}: {tree} has no proxy/ package (not an sso-sidecar checkout)")
        script = tree / ".venv" / "bin" / "sso-sidecar"
        if script.exists():
            baseline.source = SidecarSource("old", tree, (str(script),), tree, {}, f"console script {script}")
        else:
            python = _current_python()
            how = f"{python} -m proxy in {tree} with PYTHONPATH={tree} (this checkout's venv and packages)"
            command: tuple[str, ...] = (str(python), "-m", "proxy")
            if not (tree / "proxy" / "__main__.py").exists():  # older trees: the console script's entry point
                entry = "import sys; from proxy.cli import main; sys.argv[0] = 'sso-sidecar'; sys.exit(main())"
                command, how = (str(python), "-c", entry), how.replace("-m proxy", "-c 'proxy.cli:main'")
            baseline.source = SidecarSource("old", tree, command, tree, {"PYTHONPATH": str(tree)}, how)
        new_deps, old_deps = _dependencies(_paths.REPO), _dependencies(tree)
        if new_deps != old_deps:
            info["dependencies_differ"] = {
                "only_new": [d for d in new_deps if d not in old_deps],
                "only_old": [d for d in old_deps if d not in new_deps],
            }
        try:
            info["probe"] = probe(baseline.source)
        except BaselineError as exc:
            raise BaselineError(f"--baseline {spec}: {exc}\n{baseline.hint()}") from None
        info["how"] = baseline.source.how
    except BaseException:
        baseline.cleanup()
        raise
    return baseline


def working_tree() -> tuple[SidecarSource, dict[str, Any]]:
    """The working tree's sidecar source, probed the same way."""
    source = working_tree_source()
    info = {"tree": str(source.tree), "how": source.how, **_git_info(source.tree), "probe": probe(source)}
    return source, info
