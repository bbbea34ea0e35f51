"""Where a proxied, authenticated request's CPU goes: CPU µs per request, then the work per request as a table.

    .venv/bin/python bench/cpu_profile.py                       # sidecar-redis-cache, 1 worker: CPU, cProfile
    .venv/bin/python bench/cpu_profile.py --full                # ... and the same with 20 routes, assertion, roles
    .venv/bin/python bench/cpu_profile.py --baseline HEAD~1     # ... the baseline's twin, interleaved, with ratios
    .venv/bin/python bench/cpu_profile.py --pyspy --perf        # ... and py-spy's and perf's view of the same load

It starts the stack as ``bench/run.py`` does (``stack.py``: nginx with the 200-byte body, Redis, the dev IdP, a
static client), one sidecar worker with the Redis store and the session cache on (``cache_ttl: 5s``,
``log_level: info``: the access log on), makes ``--sessions`` real logins, and drives wrk with ``rotate.lua``
over their cookies (``--connections``, 64 as the benchmark). Then:

1. **CPU per request, no profiler**: ``--reps`` runs of ``--seconds`` each, every sidecar in turn; the worker's
   CPU time (``/proc/PID/task/*/schedstat``, nanoseconds; user and system split from ``/proc/PID/stat``)
   divided by the requests wrk counted. The median is the figure to compare; CPU time moves far less with
   the machine's other load than req/s does, but not nothing (a starved worker batches more per loop turn).
2. **cProfile** (``bench/profiled_sidecar.py``, switched on by SIGUSR1 only while wrk runs): each function's
   calls per request and its own and cumulative µs per request, and the own time summed by area. The
   requests are counted by ``AccessLogger.log``, called once per request. cProfile's µs are inflated (a
   Python call costs several times more under it, C calls less so): read its shares and call counts.
3. ``--pyspy``: ``py-spy record`` (sampling, ``--native`` for the C frames) of the same load, own time by
   function and area, scaled to the unprofiled µs. ``--perf``: ``perf record`` of the worker, time by shared
   object (the kernel's share is the socket work) and the top symbols.

Nothing here is a req/s benchmark (``make bench`` is); it prints, and with ``--json`` writes, the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pstats
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _paths
import baseline as baselines
import logins
import stack
import wrkbench
from routes import table as route_table

from support.procs import LOOPBACK, free_port

IDENTITY: dict[str, Any] = {
    "assertion": {},
    "roles": {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]},
}
COOKIE = "sso_sidecar"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--sessions", type=int, default=100, help="logins, rotated over by wrk (default 100)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="each CPU run, and each profiled run")
    p.add_argument("--reps", type=int, default=5, help="CPU runs per sidecar (median reported)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--full", action="store_true", help="also a sidecar with 20 routes, assertion: {} and roles")
    p.add_argument("--baseline", metavar="REF_OR_PATH", help="also the baseline's twin of every sidecar")
    p.add_argument("--no-cprofile", action="store_true")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cProfile's clock: the thread's CPU time (default) or wall time",
    )
    p.add_argument("--pyspy", action="store_true", help="py-spy record (pip install py-spy)")
    p.add_argument("--perf", action="store_true", help="perf record (Linux perf)")
    p.add_argument("--top", type=int, default=30, help="rows of the per-function tables")
    p.add_argument("--extra", default="{}", help="JSON: top-level config keys for every sidecar")
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    return p.parse_args(argv)


@dataclass
class Twin:
    name: str
    tree: Path
    run: stack.Running
    cpu: list[dict[str, float]] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# CPU of one process, precise


def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of ``pid`` (the scheduler's own account: no 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return total


def user_sys_ticks(pid: int) -> tuple[int, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


# --------------------------------------------------------------------------------------------------
# The stack


def start_sidecar(
    work: Path, name: str, tree: Path, *, idp: Any, client: Any, upstream: str, secret: str, redis_url: str,
    port: int, extra: dict[str, Any], clock: str,
) -> stack.Running:  # fmt: skip
    source = stack.SidecarSource(
        "new",
        tree,
        (sys.executable, str(_paths.BENCH / "profiled_sidecar.py")),
        tree,
        {"PYTHONPATH": str(tree), "SSO_PROFILE_OUT": str(work / f"{name}.prof"), "SSO_PROFILE_CLOCK": clock},
        "profiled",
    )
    run = stack.start_sidecar(
        work, name, idp=idp, client=client, upstream=upstream, cookie_secret=secret, store="redis",
        redis_url=redis_url, workers=1, cache_ttl="5s", port=port, log_level="info", extra=extra, source=source,
    )  # fmt: skip
    imported = run.proc.wait_for_line(r"^PROFILED_SIDECAR proxy=(\S+)$", timeout=10).group(1)
    if Path(imported).resolve() != (tree / "proxy").resolve():
        raise SystemExit(f"{name} imported {imported}, not {tree / 'proxy'}")
    return run


def wrk(url: str, cookies: Path, a: argparse.Namespace, seconds: float) -> wrkbench.WrkResult:
    settings = wrkbench.WrkSettings(connections=a.connections, threads=min(2, a.connections), duration=seconds)
    result = wrkbench.run_wrk(url, cookies, settings)
    if result.non2xx or result.socket_errors:
        raise SystemExit(f"{url}: {result.non2xx} non-2xx answers, {result.socket_errors} socket errors")
    return result


def measure_cpu(twin: Twin, cookies: Path, a: argparse.Namespace) -> dict[str, float]:
    pid = twin.run.proc.pid
    ns0, (u0, s0) = cpu_ns(pid), user_sys_ticks(pid)
    busy0 = stack.busy_seconds()
    t0 = time.monotonic()
    result = wrk(twin.run.url, cookies, a, a.seconds)
    elapsed = time.monotonic() - t0
    ns1, (u1, s1) = cpu_ns(pid), user_sys_ticks(pid)
    busy1 = stack.busy_seconds()
    n = result.requests
    ticks = (u1 - u0) + (s1 - s0)
    us = (ns1 - ns0) / 1000 / n
    row = {
        "requests": n,
        "rps": result.rps,
        "us": us,
        "user_us": us * (u1 - u0) / ticks if ticks else 0.0,
        "sys_us": us * (s1 - s0) / ticks if ticks else 0.0,
        "machine_busy_pct": 100 * (busy1 - busy0) / elapsed / (os.cpu_count() or 1),
    }
    return row


# --------------------------------------------------------------------------------------------------
# Areas: what a function's own time is spent on


_AREAS: list[tuple[str, str]] = [
    ("proxy/upstream/h1/", "h1 client (to the console)"),
    ("proxy/upstream/", "forward + relay"),
    ("proxy/gate/", "gate (decision)"),
    ("proxy/signin/", "session lookup"),
    ("proxy/sessions/", "session lookup"),
    ("proxy/auth/", "auth rules (paths, identity, cookies, routes)"),
    ("proxy/telemetry/", "access log"),
    ("proxy/app.py", "middleware"),
    ("proxy/runtime/", "runtime (pin)"),
    ("aiohttp/web_protocol", "aiohttp server: protocol"),
    ("aiohttp/web_app", "aiohttp server: app, router, middleware chain"),
    ("aiohttp/web_urldispatcher", "aiohttp server: app, router, middleware chain"),
    ("aiohttp/web_middlewares", "aiohttp server: app, router, middleware chain"),
    ("aiohttp/web_request", "aiohttp server: request object"),
    ("aiohttp/helpers", "aiohttp server: request object"),
    ("aiohttp/web_response", "aiohttp server: response + writer"),
    ("aiohttp/http_writer", "aiohttp server: response + writer"),
    ("aiohttp/", "aiohttp other"),
    ("multidict", "multidict / yarl"),
    ("yarl", "multidict / yarl"),
    ("asyncio/", "event loop (asyncio, uvloop)"),
    ("uvloop", "event loop (asyncio, uvloop)"),
    ("httptools", "httptools (llhttp)"),
    ("logging/", "logging"),
]


def area_of(where: str) -> str:
    for needle, area in _AREAS:
        if needle in where:
            return area
    return "other (builtins, C)"


def _label(func: tuple[str, int, str]) -> tuple[str, str]:
    """A readable name and the text its area is found in."""
    filename, line, name = func
    if filename == "~":  # a C function: "<method 'write' of 'uvloop.loop.UVStream' objects>"
        return name, name
    short = filename
    for marker in ("/proxy/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            short = filename.split(marker, 1)[1]
            if marker == "/proxy/":
                short = "proxy/" + short
            break
    return f"{short}:{line}({name})", filename


# --------------------------------------------------------------------------------------------------
# cProfile


def cprofile(twin: Twin, cookies: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = work / f"{twin.run.name}.prof"
    out.unlink(missing_ok=True)
    proc = twin.run.proc
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.2)  # the handler runs at the worker's next bytecode; no request is lost either way
    wrk(twin.run.url, cookies, a, a.seconds)
    proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 30
    while not out.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{twin.run.name}: no profile written")
        time.sleep(0.1)
    stats = pstats.Stats(str(out))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    requests = next((v[1] for k, v in raw.items() if k[0].endswith("telemetry/accesslog.py") and k[2] == "log"), 0)
    if not requests:
        raise SystemExit(f"{twin.run.name}: the profile saw no AccessLogger.log call")
    rows = []
    areas: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for func, (_cc, nc, tt, ct, _callers) in raw.items():
        label, where = _label(func)
        rows.append({"function": label, "calls": nc / requests, "self_us": tt * 1e6 / requests,
                     "cum_us": ct * 1e6 / requests})  # fmt: skip
        areas[area_of(where)] += tt * 1e6 / requests
        total += tt * 1e6 / requests
    rows.sort(key=lambda r: -r["self_us"])
    return {
        "requests": requests,
        "clock": a.clock,
        "total_self_us": total,
        "functions": rows,
        "areas": sorted(areas.items(), key=lambda kv: -kv[1]),
    }


# --------------------------------------------------------------------------------------------------
# py-spy and perf


def pyspy(twin: Twin, cookies: Path, work: Path, a: argparse.Namespace, us_per_request: float) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    raw = work / f"{twin.run.name}.pyspy.txt"
    args = [spy, "record", "--native", "-r", "500", "-d", str(round(a.seconds)), "-p", str(twin.run.proc.pid),
            "-f", "raw", "-o", str(raw)]  # fmt: skip
    spy_proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    wrk(twin.run.url, cookies, a, a.seconds)
    _, err = spy_proc.communicate(timeout=a.seconds + 60)
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    leaf: dict[str, int] = collections.Counter()
    areas: dict[str, int] = collections.Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stackline, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stackline.split(";")
        top = frames[-1]
        # With --native py-spy cannot tell a waiting thread from a working one: the event loop in epoll, and
        # the resolver's thread pool parked on its queue, are not work.
        if top.startswith(("epoll_wait", "epoll_pwait")) or "concurrent/futures/thread.py" in stackline:
            idle += count
            continue
        own = next((f for f in reversed(frames) if ".py:" in f), top)
        name = top if own == top else f"{top}  <- {own}"
        leaf[_short_frame(name)] += count
        areas[_native_area(top) or area_of(own)] += count
        total += count
    scale = us_per_request / total if total else 0.0
    return {
        "samples": total,
        "idle_samples": idle,
        "functions": [{"function": k, "share": v / total, "us": v * scale} for k, v in leaf.most_common(a.top)],
        "areas": [(k, v / total, v * scale) for k, v in areas.most_common()],
    }


_NATIVE_AREAS = [
    ("(libc.so", "socket I/O and libc (user side of the syscalls)"),
    ("(loop.cpython", "event loop (asyncio, uvloop)"),
    ("(_asyncio.cpython", "event loop (asyncio, uvloop)"),
    ("(_multidict", "multidict / yarl"),
    ("(_quoting", "multidict / yarl"),
    ("(_http_parser", "aiohttp server: protocol"),
    ("(_http_writer", "aiohttp server: response + writer"),
    ("(parser.cpython", "httptools (llhttp)"),
]


def _native_area(frame: str) -> str | None:
    """The area of a native leaf frame by its shared object; None for the interpreter's own (its Python frame
    says what it runs)."""
    return next((area for needle, area in _NATIVE_AREAS if needle in frame), None)


def _short_frame(frame: str) -> str:
    return re.sub(r"\([^()]*?(/proxy/|/site-packages/|/lib/python3\.\d+/)", r"(", frame)


def perf(twin: Twin, cookies: Path, work: Path, a: argparse.Namespace, us_per_request: float) -> dict[str, Any]:
    if shutil.which("perf") is None:
        return {"skipped": "perf not installed"}
    data = work / f"{twin.run.name}.perf.data"
    args = ["perf", "record", "-F", "2999", "-p", str(twin.run.proc.pid), "-o", str(data), "--", "sleep",
            str(round(a.seconds))]  # fmt: skip
    rec = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)
    wrk(twin.run.url, cookies, a, a.seconds)
    _, err = rec.communicate(timeout=a.seconds + 60)
    if not data.exists():
        return {"skipped": f"perf record failed: {err.decode(errors='replace')[-500:]}"}

    def report(sort: str) -> list[tuple[str, float, float]]:
        text = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit", "0.7"],
                              capture_output=True, text=True, timeout=120).stdout  # fmt: skip
        rows = []
        for line in text.splitlines():
            m = re.match(r"^\s+([\d.]+)%\s+(.*\S)\s*$", line)
            if m:
                share = float(m.group(1)) / 100
                rows.append((m.group(2), share, share * us_per_request))
        return rows

    return {"dso": report("dso"), "symbols": report("dso,sym")[: a.top]}


# --------------------------------------------------------------------------------------------------
# Report


def print_cpu(twins: list[Twin]) -> list[dict[str, Any]]:
    print("\n## CPU per proxied request, no profiler (median of the runs; min-max of the total)\n")
    print("| sidecar | tree | µs/request | user µs | sys µs | min-max µs | req/s | machine busy % |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    summary = []
    for t in twins:
        us = [c["us"] for c in t.cpu]
        row = {
            "sidecar": t.name,
            "tree": str(t.tree),
            "us": statistics.median(us),
            "user_us": statistics.median(c["user_us"] for c in t.cpu),
            "sys_us": statistics.median(c["sys_us"] for c in t.cpu),
            "min_us": min(us),
            "max_us": max(us),
            "rps": statistics.median(c["rps"] for c in t.cpu),
            "busy": statistics.median(c["machine_busy_pct"] for c in t.cpu),
            "runs": t.cpu,
        }
        summary.append(row)
        print(f"| {t.name} | {t.tree.name} | {row['us']:.1f} | {row['user_us']:.1f} | {row['sys_us']:.1f} | "
              f"{row['min_us']:.1f}-{row['max_us']:.1f} | {row['rps']:,.0f} "
              f"| {row['busy']:.0f} |")  # fmt: skip
    by_name = {r["sidecar"]: r for r in summary}
    pairs = [(n, by_name[n + "@old"]) for n in by_name if n + "@old" in by_name]
    if pairs:
        print("\n| sidecar | new/old µs (medians) | new/old µs (fastest runs) | per run pair |")
        print("|---|---:|---:|---|")
        for name, old in pairs:
            new = by_name[name]
            each = [n["us"] / o["us"] for n, o in zip(new["runs"], old["runs"], strict=False)]
            print(f"| {name} | {new['us'] / old['us']:.3f} | {new['min_us'] / old['min_us']:.3f} | "
                  f"{', '.join(f'{x:.2f}' for x in each)} |")  # fmt: skip
    return summary


def print_cprofile(name: str, prof: dict[str, Any], top: int) -> None:
    print(
        f"\n## cProfile: {name}, {prof['requests']:,} requests, {prof['clock']} clock (µs inflated by the profiler)\n"
    )
    print(f"own time of every function, summed: {prof['total_self_us']:.1f} µs/request\n")
    print("| area | own µs/request | share |")
    print("|---|---:|---:|")
    for area, us in prof["areas"]:
        print(f"| {area} | {us:.1f} | {100 * us / prof['total_self_us']:.1f} % |")
    print("\n| function | calls/request | own µs/request | cumulative µs/request |")
    print("|---|---:|---:|---:|")
    for r in prof["functions"][:top]:
        fn = r["function"].replace("|", "\\|")
        print(f"| `{fn}` | {r['calls']:.2f} | {r['self_us']:.2f} | {r['cum_us']:.2f} |")


def print_sampled(title: str, rows: list[tuple[str, float, float]], funcs: list[Any] | None = None) -> None:
    print(f"\n## {title}\n")
    print("| what | share | µs/request (scaled to the unprofiled CPU) |")
    print("|---|---:|---:|")
    for what, share, us in rows:
        print(f"| {what.replace('|', chr(92) + '|')} | {100 * share:.1f} % | {us:.1f} |")
    if funcs:
        print("\n| own time in | share | µs/request |")
        print("|---|---:|---:|")
        for f in funcs:
            print(f"| `{f['function'].replace('|', chr(92) + '|')}` | {100 * f['share']:.1f} % | {f['us']:.1f} |")


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sso-profile-"))
    started: list[Any] = []
    twins: list[Twin] = []
    old_tree: baselines.Baseline | None = None
    out: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(a).items()}, "started": time.strftime("%FT%T%z")}
    try:
        if stack.missing_packages(with_apache=False):
            raise SystemExit(f"missing: {' '.join(stack.missing_packages(with_apache=False))}")
        trees = [("", _paths.REPO)]
        if a.baseline:
            old_tree = baselines.resolve(a.baseline, work)
            trees.append(("@old", old_tree.source.tree))
        nginx = stack.start_nginx(work)
        started.append(nginx)
        redis = stack.start_redis(work)
        started.append(redis)
        extra = json.loads(a.extra)
        variants = [("sidecar-redis-cache", extra)]
        if a.full:
            variants.append(("sidecar-full", {**extra, **IDENTITY, "routes": route_table(20)}))
        ports = {name + key: free_port() for name, _ in variants for key, _ in trees}
        client = stack.static_client("bench-profile", [f"http://{LOOPBACK}:{p}" for p in ports.values()])
        idp = stack.start_idp(work, [client])
        started.append(idp)
        secret = secrets.token_urlsafe(32)
        for name, extra_keys in variants:
            for key, tree in trees:
                run = start_sidecar(work, name + key, tree, idp=idp, client=client, upstream=nginx.url, secret=secret,
                                    redis_url=redis.url, port=ports[name + key], extra=extra_keys,
                                    clock=a.clock)  # fmt: skip
                started.append(run)
                twins.append(Twin(name + key, tree, run))
        log(f"{len(twins)} sidecar(s) in {work}; logging in {a.sessions} users")
        users = [f"bench.user{i:05d}" for i in range(a.sessions)]
        batch = asyncio.run(logins.login_many(twins[0].run.url, users, cookie_name=COOKIE))
        if not batch.cookies:
            raise SystemExit(f"no sessions: {batch.failures[:3]}")
        cookies = wrkbench.write_cookies(work / "cookies.txt", batch.cookies)
        for t in twins:
            wrk(t.run.url, cookies, a, a.warmup)  # every sidecar shares the sessions: each must accept them
        for rep in range(a.reps):
            order = twins if rep % 2 == 0 else list(reversed(twins))
            for t in order:
                t.cpu.append(measure_cpu(t, cookies, a))
            log(f"CPU run {rep + 1}/{a.reps}: " + ", ".join(f"{t.name} {t.cpu[-1]['us']:.1f} µs" for t in twins))
        out["cpu"] = print_cpu(twins)
        us_of = {r["sidecar"]: r["us"] for r in out["cpu"]}
        out["profiles"] = {}
        for t in twins:
            entry: dict[str, Any] = {}
            if not a.no_cprofile:
                entry["cprofile"] = prof = cprofile(t, cookies, work, a)
                print_cprofile(t.name, prof, a.top)
            if a.pyspy:
                entry["pyspy"] = spy = pyspy(t, cookies, work, a, us_of[t.name])
                if "skipped" in spy:
                    print(f"\npy-spy: {spy['skipped']}")
                else:
                    print_sampled(f"py-spy --native: {t.name}, {spy['samples']} busy samples "
                                  f"({spy['idle_samples']} idle left out), own time by area",
                                  spy["areas"], spy["functions"])  # fmt: skip
            if a.perf:
                entry["perf"] = rec = perf(t, cookies, work, a, us_of[t.name])
                if "skipped" in rec:
                    print(f"\nperf: {rec['skipped']}")
                else:
                    print_sampled(f"perf: {t.name}, by shared object", rec["dso"])
                    print_sampled(f"perf: {t.name}, top symbols", rec["symbols"])
            out["profiles"][t.name] = entry
        if a.json:
            a.json.write_text(json.dumps(out, indent=1, default=str))
        return 0
    finally:
        for proc in reversed(started):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {proc}: {exc}", file=sys.stderr)
        if old_tree is not None:
            old_tree.cleanup()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
