"""``make bench``: sso-sidecar side by side with Apache + mod_auth_openidc and a bare aiohttp proxy.

Everything runs on this machine, in one run: nginx serving a fixed 200-byte body is the upstream of
every system; Redis and the dev IdP are shared. Each system gets real logins through the dev IdP, then
wrk sends authenticated GETs rotating over all of its session cookies; the API-client variant
(``sidecar-bearer``) gets ``Authorization: Bearer`` access tokens from the bench's own issuer instead
(``bench/issuer.py``). See bench/README.md.

    .venv/bin/python bench/run.py                 # the full benchmark (5-6 minutes on 2 cores)
    .venv/bin/python bench/run.py --smoke         # seconds: bare proxy + sidecar (memory store) + bearer only
    .venv/bin/python bench/run.py --baseline HEAD --only sidecars   # working tree vs last commit
    .venv/bin/python bench/run.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import _paths
import aiohttp
import baseline
import issuer
import logins
import probes
import report
import routes
import stack
import wrkbench
from baseline import Baseline, BaselineError
from report import OLD
from stack import Running, SidecarSource
from wrkbench import WrkResult, WrkSettings

from support.procs import LOOPBACK, ProcessError, free_port, http_status

APACHE_COOKIE = "mod_auth_openidc_session"
SIDECAR_COOKIE = "sso_sidecar"
# API clients: RFC 9068 access tokens from bench/issuer.py, one of the sidecar's sso.extra_issuers.
BEARER = "sidecar-bearer"
BEARER_AUDIENCE = "api://sso-sidecar-bench"
# --identity: the signed assertion (every default) and roles from groups (the dev IdP puts admin* users in "admins").
IDENTITY: dict[str, Any] = {
    "assertion": {},
    "roles": {"rules": [{"role": "admin", "groups": ["admins"]}], "default": ["viewer"]},
}
IDENTITY_VARIANTS = ("sidecar-redis-cache", "sidecar-redis-nocache", "sidecar-memory")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a quick check of the harness (no Apache, no Redis)")
    p.add_argument(
        "--baseline",
        metavar="REF_OR_PATH",
        help="also run every sidecar variant from this git ref (checked out into a temporary worktree) or "
        "other checkout, interleaved with the working tree's, and report new/old ratios",
    )
    p.add_argument(
        "--only",
        choices=("sidecars",),
        help="sidecars: only the sidecar variants' throughput (no Apache, no bare proxy, no memory/RSS/"
        "invalidation probes): the quick before/after comparison",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load per system first (2)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported (3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument(
        "--sessions",
        type=int,
        default=500,
        help="distinct sessions per system, and distinct access tokens for sidecar-bearer (500)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="sidecar and bare proxy workers")
    p.add_argument("--cache-ttl", default="5s", help="session.cache_ttl of the 'cache on' variants (5s)")
    p.add_argument("--rss-sessions", type=int, default=10_000, help="live sessions for the RSS probe; 0 skips")
    p.add_argument("--pin", choices=("auto", "on", "off"), default="auto", help="wrk under taskset -c 1")
    p.add_argument("--no-apache", action="store_true", help="leave Apache + mod_auth_openidc out")
    p.add_argument("--no-install", action="store_true", help="never run apt-get")
    p.add_argument("--log-level", default="info", help="the sidecars' log_level (info: access log on)")
    p.add_argument("--profile", type=float, default=0.0, help="py-spy seconds per sidecar variant (if installed)")
    p.add_argument(
        "--routes",
        type=int,
        default=0,
        metavar="N",
        help="also run sidecar-routesN: the Redis sidecar with session cache (in --smoke: the memory one) with N "
        "routes, N-1 that never match the benchmark's path and one that does; its baseline twin runs without "
        "routes when the baseline has none",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the routes variant (20 routes unless --routes says otherwise) also carries `assertion: {}` and "
        "`roles`: all three on, against sidecar-redis-cache without them in the same run (target: within 5 %%)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results file (default bench/results/latest.json for a full run; smoke.json, compare.json or "
        "sidecars.json for the partial runs, so they never overwrite the full run's)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp directory (configs, logs)")
    p.add_argument(
        "--identity",
        action="store_true",
        help="run the cookie-session sidecars (Redis cache on and off, memory) with `assertion: {}` and `roles`; "
        "a baseline that refuses these keys runs without them, and its new/old row says so",
    )
    args = p.parse_args(argv)
    if args.full and args.routes <= 0:
        args.routes = 20
    if args.smoke:
        # No warm-up: a smoke run checks the harness, not speed (and wrk rounds 0.5 s up to a whole second).
        args.duration, args.warmup, args.reps = min(args.duration, 1.0), 0.0, 1
        args.sessions, args.rss_sessions, args.no_apache = min(args.sessions, 8), 0, True
        args.workers, args.pin = 1, "off"
    if args.only == "sidecars":
        args.no_apache = True
    if args.out is None:
        kind = "smoke" if args.smoke else "compare" if args.baseline else "sidecars" if args.only else "latest"
        args.out = _paths.RESULTS / f"{kind}.json"
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="sso-bench-"))
        self.started: list[Any] = []  # anything with stop()
        self.notes: list[str] = []
        self.systems: dict[str, Running] = {}
        self.cookies: dict[str, Path] = {}  # system -> its credentials, one header value a line
        self.headers: dict[str, str] = {}  # system -> the header those go in, if not Cookie
        self.issuer: stack.TokenIssuer | None = None  # the API clients' issuer (bench/issuer.py)
        self.redis: Any = None
        self.idp: Any = None
        self.nginx: Running | None = None
        self.new: SidecarSource | None = None  # the working tree's sidecar
        self.baseline: Baseline | None = None  # --baseline
        self.config_differs: dict[str, str] = {}  # variant -> how the baseline's config had to differ
        self.refused: dict[str, list[str]] = {}  # variant -> config keys the baseline refused
        self.use_wrk = shutil.which("wrk") is not None
        self.t_start = time.monotonic()
        self.out: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "notes": self.notes,
        }

    # -- orchestration --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        self.prerequisites()
        self.sources()
        self.start_shared()
        self.start_systems()
        self.check_identity()
        asyncio.run(self.collect_sessions())
        wrk = self.wrk_settings()
        self.out["wrk"] = {**wrk.__dict__, "generator": "wrk" if self.use_wrk else "python (wrk not installed)"}
        self.throughput(wrk)
        if a.profile > 0:
            self.profile(wrk)
        probes_on = self.redis is not None and "sidecar-redis-cache" in self.systems and a.only != "sidecars"
        if probes_on:
            self.memory()
        for name in [n for n in self.systems if n not in ("sidecar-redis-cache",)]:
            self.systems.pop(name).stop()
        if probes_on:
            asyncio.run(self.invalidation())
            if a.rss_sessions > 0:
                asyncio.run(self.rss(wrk))
        self.out["ratios"] = report.ratios(self.out)
        if self.baseline is not None:
            self.out["comparison"] = report.comparison(self.out, self.config_differs)
        self.out["seconds"] = round(time.monotonic() - self.t_start, 1)
        return self.out

    def stop_all(self) -> None:
        for proc in reversed([*self.systems.values(), *self.started]):
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the rest
                print(f"stopping {proc}: {exc}", file=sys.stderr)
        self.systems.clear()
        self.started.clear()
        if self.baseline is not None:
            self.baseline.cleanup()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- setup ----------------------------------------------------------------------------------------

    def prerequisites(self) -> None:
        a = self.args
        missing = stack.missing_packages(with_apache=not a.no_apache, with_wrk=not a.smoke, with_redis=not a.smoke)
        if missing and not a.no_install:
            try:
                stack.install(missing)
            except (subprocess.CalledProcessError, OSError) as exc:
                self.note(f"apt-get install {' '.join(missing)} failed: {exc}")
        still = stack.missing_packages(with_apache=not a.no_apache, with_wrk=not a.smoke, with_redis=not a.smoke)
        if any(p in still for p in ("apache2", "libapache2-mod-auth-openidc")):
            self.note("Apache + mod_auth_openidc not installed: left out")
            a.no_apache = True
        if "nginx" in still or "redis-server" in still:
            raise SystemExit(f"missing: {' '.join(still)} (Debian: apt-get install {' '.join(still)})")
        self.use_wrk = shutil.which("wrk") is not None
        if not self.use_wrk:
            self.note("wrk not installed: a Python load generator is used; its numbers are far lower")
        self.out["versions"] = stack.versions(with_apache=not a.no_apache)

    def sources(self) -> None:
        """Which source each sidecar runs, each checked with an import probe before anything starts."""
        self.new, new_info = baseline.working_tree()
        self.out["new"] = new_info
        log(f"new: working tree {new_info.get('head', '')} ({new_info['how']}) imports {new_info['probe']['proxy']}")
        if new_info.get("uncommitted_under_proxy"):
            log(f"new: {new_info['uncommitted_under_proxy']} uncommitted change(s) under proxy/ or pyproject.toml")
        if self.args.baseline:
            self.baseline = baseline.resolve(self.args.baseline, self.work)
            info = self.baseline.info
            self.out["baseline"] = info
            self.out["versions"]["sso-sidecar (old)"] = info["probe"]["version"]
            log(f"old: {self.args.baseline} = {info.get('head', '?')} ({info['how']}) imports {info['probe']['proxy']}")
            if info.get("dependencies_differ"):
                self.note(f"the baseline's pyproject.toml lists other dependencies: {info['dependencies_differ']}")

    def start_shared(self) -> None:
        """nginx, Redis and the dev IdP, with a static client per relying party.

        Static, not dynamically registered: the dev IdP keeps dynamic registrations in oidc-provider's
        development store, an LRU of 1000 entries that a few hundred logins of other clients evict.
        """
        a = self.args
        log(f"work directory {self.work}")
        self.issuer = stack.start_issuer(self.work, tokens=a.sessions, audience=BEARER_AUDIENCE)
        self.started.append(self.issuer)
        self.nginx = stack.start_nginx(self.work)
        self.started.append(self.nginx)
        if not a.smoke:
            self.redis = stack.start_redis(self.work)
            self.started.append(self.redis)
        keys = ["cache", "nocache", "replica", "memory", "apache", "bearer"]
        if self.baseline is not None:
            keys += ["cache" + OLD, "nocache" + OLD, "memory" + OLD, "bearer" + OLD]
        if a.routes > 0:
            keys += ["routes"] + (["routes" + OLD] if self.baseline is not None else [])
        self.ports = {k: free_port() for k in keys}
        base = {k: f"http://{LOOPBACK}:{p}" for k, p in self.ports.items()}
        # The routes variant is a Redis sidecar, or (--smoke, no Redis) a memory one: either client has its URIs.
        redis_bases = [base[k] for k in keys if k.startswith(("cache", "nocache", "replica", "routes"))]
        self.clients = {
            # Every Redis-backed sidecar (the baseline's too) shares one client (and the cookie secret and the
            # store), so one set of sessions serves all of them; back-channel logout goes to the first.
            "redis": stack.static_client(
                "bench-sidecar-redis", redis_bases, backchannel=base["cache"] + "/oauth2/backchannel-logout"
            ),
            "memory": stack.static_client(
                "bench-sidecar-memory", [base[k] for k in keys if k.startswith(("memory", "routes"))]
            ),
            "apache": stack.static_client("bench-apache", [base["apache"]]),
        }
        self.idp = stack.start_idp(self.work, list(self.clients.values()))
        self.started.append(self.idp)
        log(f"upstream {self.nginx.url} ({stack.BODY_SIZE}-byte body), dev IdP {self.idp.issuer}")
        self.issuer.wait()
        sizes = sorted(len(line) for line in self.issuer.tokens.read_text().split("\n") if line)
        self.out["bearer"] = {
            "issuer": self.issuer.issuer,
            "tokens": len(sizes),
            "kind": "RFC 9068 access token (typ at+jwt, scope, one sub each)",
            "alg": issuer.ALG,
            "audience": BEARER_AUDIENCE,
            "authorization_header_bytes_median": sizes[len(sizes) // 2] if sizes else None,
        }
        log(f"API clients' issuer {self.issuer.issuer}: {len(sizes)} access tokens")

    def start_systems(self) -> None:
        a = self.args
        upstream = self.nginx_url()
        self.secret = secrets.token_urlsafe(32)
        workers = a.workers
        if a.only != "sidecars":
            self.add(stack.start_bare(self.work, upstream, workers), f"bare-{workers}w")
            if workers != 1:
                self.add(stack.start_bare(self.work, upstream, 1), "bare-1w")
        if self.redis is not None:
            # The sidecar itself with SSO switched off: the same server and upstream client as the
            # sidecars below, no authentication. Against it, the sidecars' figures are the cost of auth.
            def passthrough(source: SidecarSource, key: str) -> Running:
                return stack.start_sidecar(
                    self.work, "passthrough" + key, idp=self.idp, client=self.clients["memory"], upstream=upstream,
                    cookie_secret=self.secret, store="redis", redis_url=self.redis.url, workers=workers,
                    cache_ttl=None, log_level=a.log_level, sso_enabled=False, source=source,
                )  # fmt: skip

            self.add(passthrough(self.new_source(), ""), f"passthrough-{workers}w")
            self.add_twin(f"passthrough-{workers}w", lambda old: passthrough(old, OLD))
        if self.redis is not None:
            self.start_redis_sidecars(upstream)
        self.start_bearer_sidecar(upstream)
        if a.routes > 0:
            self.start_routes_sidecar(upstream)

        def memory(source: SidecarSource, key: str) -> Running:
            return self.with_identity("sidecar-memory-1w" + key, source, lambda extra: stack.start_sidecar(
                self.work, "sidecar-memory" + key, idp=self.idp, client=self.clients["memory"], upstream=upstream,
                cookie_secret=self.secret, store="memory", redis_url=None, workers=1, cache_ttl=None,
                port=self.ports["memory" + key], log_level=a.log_level, extra=extra, source=source,
            ))  # fmt: skip

        self.add(memory(self.new_source(), ""), "sidecar-memory-1w")
        self.add_twin("sidecar-memory-1w", lambda old: memory(old, OLD))
        if not a.no_apache:
            try:
                apache = stack.start_apache(
                    self.work, idp=self.idp, client=self.clients["apache"], port=self.ports["apache"],
                    upstream=upstream, redis_port=self.redis.port,
                )  # fmt: skip
            except ProcessError as exc:
                self.note(f"Apache did not start, left out: {str(exc)[:600]}")
            else:
                self.add(apache, "apache")
                self.note(f"Apache event MPM: {apache.extra['mpm']}, MaxKeepAliveRequests 0 (unlimited)")
        for name, run in self.systems.items():
            log(f"{name}: {run.url}, {run.workers} worker(s){'; ' + '; '.join(run.notes) if run.notes else ''}")

    def check_identity(self) -> None:
        """With ``--identity``: each sidecar that runs with it publishes its keys (``/oauth2/jwks.json``), so the
        measurement is of what it claims to be."""
        running = {name: run for name, run in self.systems.items() if run.extra.get("identity")}
        for name, run in running.items():
            status = http_status(run.url + "/oauth2/jwks.json")
            if status != 200:
                raise SystemExit(f"{name} runs with --identity but /oauth2/jwks.json answers {status}")
        if self.args.identity or self.args.full:
            self.out["identity"] = {"config": IDENTITY, "variants": sorted(running)}
            log(f"identity on: {', '.join(sorted(running)) or 'no variant'}")

    def start_redis_sidecars(self, upstream: str) -> None:
        a = self.args
        variants = [("sidecar-redis-cache", "cache", a.cache_ttl), ("sidecar-redis-nocache", "nocache", "0")]
        for name, key, ttl in variants:
            try:
                run = self.redis_sidecar(name, key, ttl, upstream)
            except ProcessError as exc:
                if stack.config_refused(exc, "cache_ttl"):
                    self.note(f"{name}: this sidecar refuses session.cache_ttl={ttl}; variant skipped")
                    continue
                raise
            self.add(run, name)
            self.add_twin(name, functools.partial(self.redis_sidecar, name, key, ttl, upstream))
        cache = "sidecar-redis-cache"
        without_ttl = functools.partial(self.redis_sidecar, cache, "cache", None, upstream)
        if not any(n.startswith("sidecar-redis") for n in self.systems):
            # A sidecar without the setting at all: run it once, as it comes.
            self.add(without_ttl(), cache)
            self.note(f"{cache} ran without session.cache_ttl (the sidecar's default)")
            self.add_twin(cache, without_ttl)
        elif cache in self.systems and self.refused.get(cache) == ["session.cache_ttl"]:
            # The same for a baseline that refuses the setting: its default, against the cache-on variant.
            self.add_twin(cache, without_ttl)
            if cache + OLD in self.systems:
                self.config_differs[cache] = "old without session.cache_ttl"
                self.note(f"{cache}{OLD} ran without session.cache_ttl (the baseline's default)")

    def start_bearer_sidecar(self, upstream: str) -> None:
        """API clients: every request carries ``Authorization: Bearer`` with one of the issuer's access
        tokens, and no cookie. The sidecar accepts the issuer as its one ``sso.extra_issuers`` entry; it runs
        like the Redis variants (Redis store, ``--workers``, the default ``session.cache_ttl``: no session is
        read for a bearer token). ``--smoke`` runs no Redis: there it has the memory store and one worker."""
        assert self.issuer is not None
        extra = {"extra_issuers": [{"issuer_url": self.issuer.issuer, "audiences": [self.issuer.audience]}]}

        def bearer(source: SidecarSource | None = None) -> Running:
            if self.redis is not None:
                return self.redis_sidecar(BEARER, "bearer", None, upstream, source, sso_extra=extra)
            source = source or self.new_source()
            return stack.start_sidecar(
                self.work, BEARER + (OLD if source.label == "old" else ""), idp=self.idp,
                client=self.clients["memory"], upstream=upstream, cookie_secret=self.secret, store="memory",
                redis_url=None, workers=1, cache_ttl=None, log_level=self.args.log_level, sso_extra=extra,
                source=source,
            )  # fmt: skip

        try:
            run = bearer()
        except ProcessError as exc:
            keys = stack.refused_keys(exc)
            if not keys:
                raise
            self.note(f"{BEARER}: this sidecar refuses {', '.join(keys)}; variant skipped")
            return
        self.add(run, BEARER)
        self.add_twin(BEARER, bearer)
        for name in (BEARER, BEARER + OLD):
            self.headers[name] = "Authorization"

    def start_routes_sidecar(self, upstream: str) -> None:
        """``sidecar-routesN`` (``--routes N``): ``sidecar-redis-cache`` with N routes (``bench/routes.py``), or
        without Redis (``--smoke``) ``sidecar-memory-1w`` with them. A baseline that refuses ``routes`` (one from
        before them) runs its twin without routes, and the row says so: new with N routes against old with
        none is what routes cost; the other variants' rows show that a config without routes pays nothing."""
        a = self.args
        name = routes.name(a.routes)

        def variant(source: SidecarSource, *, with_routes: bool = True) -> Running:
            old = source.label == "old"
            key, label = "routes" + (OLD if old else ""), name + (OLD if old else "")
            extra = {"routes": routes.table(a.routes)} if with_routes else {}
            if a.full and with_routes:
                extra.update(IDENTITY)  # --full: routes, assertion and roles all on
            redis = self.redis is not None
            run = stack.start_sidecar(
                self.work, label, idp=self.idp, client=self.clients["redis" if redis else "memory"],
                upstream=upstream, cookie_secret=self.secret, store="redis" if redis else "memory",
                redis_url=self.redis.url if redis else None, workers=a.workers if redis else 1,
                cache_ttl=a.cache_ttl if redis else None, port=self.ports[key], log_level=a.log_level,
                source=source, extra=extra,
            )  # fmt: skip
            if a.full and with_routes:
                run.extra["identity"] = True  # check_identity asks it for its keys before any load
                run.notes.append("assertion: {} and roles on")
            return run

        self.add(variant(self.new_source()), name)
        if a.full:
            self.out["full"] = {"variant": name, "against": "sidecar-redis-cache", "config": IDENTITY}
        if self.baseline is None:
            return
        try:
            twin = variant(self.baseline.source)
        except ProcessError as exc:
            refused = set(stack.refused_keys(exc))
            if not refused or not refused <= {"routes", *IDENTITY}:
                raise BaselineError(
                    f"the baseline's sidecar did not start as {name}{OLD}:\n{exc}\n" + self.baseline.hint()
                ) from None
            twin = variant(self.baseline.source, with_routes=False)
            if refused == {"routes"}:
                self.config_differs[name] = "old without routes (the baseline has none)"
                self.note(f"{name}{OLD} ran without routes: the baseline refuses the key")
            else:
                self.config_differs[name] = f"old without {', '.join(sorted(refused))} (the baseline refuses them)"
                self.note(f"{name}{OLD} ran without {', '.join(sorted(refused))}: the baseline refuses them")
        self.add(twin, name + OLD)

    def redis_sidecar(
        self,
        name: str,
        key: str,
        ttl: str | None,
        upstream: str,
        source: SidecarSource | None = None,
        *,
        sso_extra: dict[str, Any] | None = None,
    ) -> Running:
        source = source or self.new_source()
        if source.label == "old":
            name, key = name + OLD, key + OLD
        try:
            return self._redis_sidecar(name, key, ttl, upstream, self.args.workers, source, sso_extra)
        except ProcessError as exc:
            if self.args.workers == 1 or not stack.config_refused(exc, "workers"):
                raise
            self.note(f"{name}: this sidecar refuses workers={self.args.workers}; ran with 1 worker")
            return self._redis_sidecar(name, key, ttl, upstream, 1, source, sso_extra)

    def _redis_sidecar(
        self,
        name: str,
        key: str,
        ttl: str | None,
        upstream: str,
        workers: int,
        source: SidecarSource,
        sso_extra: dict[str, Any] | None,
    ) -> Running:
        return self.with_identity(name, source, lambda extra: stack.start_sidecar(
            self.work, name, idp=self.idp, client=self.clients["redis"], upstream=upstream,
            cookie_secret=self.secret, store="redis", redis_url=self.redis.url, workers=workers,
            cache_ttl=ttl, port=self.ports[key], log_level=self.args.log_level, sso_extra=sso_extra,
            extra=extra, source=source,
        ))  # fmt: skip

    def with_identity(
        self, name: str, source: SidecarSource, start: Callable[[dict[str, Any] | None], Running]
    ) -> Running:
        """``start`` with ``IDENTITY`` when ``--identity`` asks for it on this variant. A baseline that refuses its
        keys (it predates them) runs without them: its row compares the identity's cost with none at all."""
        extra = IDENTITY if self.args.identity and name.startswith(IDENTITY_VARIANTS) else None
        try:
            run = start(extra)
        except ProcessError as exc:
            refused = set(stack.refused_keys(exc))
            if extra is None or source.label != "old" or not refused or not refused <= set(IDENTITY):
                raise
            variant = name.removesuffix(OLD)
            self.config_differs[variant] = "old without assertion and roles (it has neither)"
            self.note(f"{name}: the baseline refuses {', '.join(sorted(refused))}; it runs without them")
            extra = None
            run = start(extra)
        if extra is not None:
            run.extra["identity"] = True
            run.notes.append("assertion: {} and roles on")
        return run

    def new_source(self) -> SidecarSource:
        assert self.new is not None
        return self.new

    def add_twin(self, name: str, start: Callable[[SidecarSource], Running]) -> None:
        """The baseline's twin of ``name`` (``name@old``), with the identical config. A config key the
        baseline refuses leaves the twin out with a note, as the harness does for the working tree; any
        other failure to start ends the run with the baseline's log."""
        if self.baseline is None or name not in self.systems:
            return
        try:
            run = start(self.baseline.source)
        except ProcessError as exc:
            keys = stack.refused_keys(exc)
            if keys:
                self.refused[name] = keys
                self.note(f"{name}{OLD}: the baseline refuses {', '.join(keys)}; no comparison for {name}")
                return
            raise BaselineError(
                f"the baseline's sidecar ({self.baseline.info['how']}) did not start as {name}{OLD}:\n{exc}\n"
                + self.baseline.hint()
            ) from None
        self.add(run, name + OLD)

    def add(self, run: Running, label: str) -> None:
        run.name = label
        self.systems[label] = run

    def note(self, text: str) -> None:
        log("NOTE " + text)
        self.notes.append(text)

    # -- sessions -------------------------------------------------------------------------------------

    async def collect_sessions(self) -> None:
        """``--sessions`` real logins per system that needs them; the Redis sidecars share theirs (the
        baseline's too, when it accepts the working tree's cookies). A memory store is its process's own,
        so the baseline's memory sidecar gets logins of its own (the same users)."""
        self.out["logins"] = {}
        shares_redis = self.redis is not None and "sidecar-redis-cache" in self.systems
        for label in list(self.systems):
            if label.startswith(("bare", "passthrough", "sidecar-redis-nocache", BEARER)):
                continue  # they forward the Redis sidecar's cookies, share its sessions, or have tokens
            if label.startswith(routes.PREFIX) and shares_redis:
                continue  # the Redis sidecar's client, cookie secret and store: its sessions
            if label.startswith("sidecar-redis") and label.endswith(OLD):
                continue  # the working tree's sessions, if the baseline accepts them (below)
            await self.login(label)
        if "sidecar-redis-cache" in self.cookies:
            self.cookies["sidecar-redis-nocache"] = self.cookies["sidecar-redis-cache"]
        await self.share_redis_sessions_with_baseline()
        if shares_redis:
            for label in [n for n in self.systems if n.startswith(routes.PREFIX)]:
                twin = "sidecar-redis-cache" + (OLD if label.endswith(OLD) else "")
                self.cookies[label] = self.cookies.get(twin) or self.cookies["sidecar-redis-cache"]
        for label in self.systems:
            if label.startswith(("bare", "passthrough")):
                # The same Cookie headers as the sidecar gets: these proxies forward them untouched.
                self.cookies[label] = self.cookies.get("sidecar-redis-cache") or self.cookies["sidecar-memory-1w"]
            elif label.startswith(BEARER) and self.issuer is not None:
                self.cookies[label] = self.issuer.tokens  # no cookie: "Bearer <JWT>" lines (self.headers)
        await self.check_bearer_tokens()
        await self.check_routes()

    async def check_routes(self) -> None:
        """Before any load, the routes variant must have applied its table: a path of a route that refuses the
        benchmark's users gets 403, ``/`` gets 200. A sidecar that ignored its routes would look free."""
        a = self.args
        name, path = routes.name(a.routes), routes.probe(a.routes)
        if a.routes <= 0 or name not in self.systems:
            return
        cookie = self.cookies[name].read_text().split()[0]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            statuses = {}
            for target in [p for p in (path, "/") if p is not None]:
                headers = {"Cookie": cookie, "Accept": "text/html"}
                async with http.get(self.systems[name].url + target, headers=headers, allow_redirects=False) as resp:
                    statuses[target] = resp.status
        wanted = {**({path: 403} if path else {}), "/": 200}
        if statuses != wanted:
            raise SystemExit(f"{name} does not apply its {a.routes} routes: answers {statuses}, wanted {wanted}")
        self.out["routes"] = {"variant": name, "routes": a.routes, "checked": statuses}

    async def check_bearer_tokens(self) -> None:
        """Before any load, a few of the access tokens on each bearer sidecar: each must get 2xx. A sidecar
        that refused them would answer 401 faster than it serves, and look fast. The working tree's
        refusing them ends the run; the baseline's leaves its twin out with a note (no comparison)."""
        assert self.issuer is not None
        sample = self.issuer.tokens.read_text().splitlines()[:3]
        for name in [n for n in self.systems if n.startswith(BEARER)]:
            answers = await self._answers(name, sample, "Authorization")
            refused = [a for a in answers if not 200 <= a[0] < 300]
            if not refused:
                continue
            why = "; ".join(sorted({f"{status} {challenge}".strip() for status, challenge in refused}))
            if not name.endswith(OLD):
                raise SystemExit(f"{name} refuses the benchmark's access tokens: {why}")
            self.systems.pop(name).stop()
            self.note(f"{name}: the baseline refuses the benchmark's access tokens ({why}); no comparison for {BEARER}")

    async def login(self, label: str) -> None:
        run = self.systems[label]
        users = [f"bench.user{i:05d}" for i in range(self.args.sessions)]
        cookie = APACHE_COOKIE if label == "apache" else SIDECAR_COOKIE
        rss_before = probes.rss_total_kib(run)["total_kib"]
        batch = await logins.login_many(run.url, users, cookie_name=cookie, cpu_seconds=run.cpu)
        rss_after = probes.rss_total_kib(run)["total_kib"]
        summary = batch.summary()
        summary["rss_growth_kib"] = rss_after - rss_before
        self.out["logins"][label] = summary
        log(f"{label}: {summary}")
        if not batch.cookies:
            raise SystemExit(f"no session for {label}: {batch.failures[:3]}")
        self.cookies[label] = wrkbench.write_cookies(self.work / f"cookies-{label}.txt", batch.cookies)

    async def share_redis_sessions_with_baseline(self) -> None:
        """The baseline's Redis sidecars use the working tree's sessions (same client, cookie secret and
        store) if they accept them: a few are tried on each first. If the cookie or the stored record has
        changed format, the baseline's sidecars get logins of their own."""
        olds = [n for n in self.systems if n.startswith("sidecar-redis") and n.endswith(OLD)]
        shared = self.cookies.get("sidecar-redis-cache")
        if not olds or shared is None:
            return
        sample = shared.read_text().split()[:3]
        refused = {n: s for n in olds if (s := await self._statuses(n, sample)) != [200] * len(sample)}
        if not refused:
            for name in olds:
                self.cookies[name] = shared
            self.out["baseline"]["shares_sessions"] = True
            return
        self.note(
            f"the baseline does not accept the working tree's sessions (answers {refused}): its Redis "
            "sidecars get logins of their own"
        )
        self.out["baseline"]["shares_sessions"] = False
        first = olds[0]
        await self.login(first)
        for name in olds:
            self.cookies[name] = self.cookies[first]

    async def _statuses(self, name: str, cookies: list[str]) -> list[int]:
        return [status for status, _ in await self._answers(name, cookies, "Cookie")]

    async def _answers(self, name: str, values: list[str], header: str) -> list[tuple[int, str]]:
        """``GET /`` with each value of ``header``: the status and the ``WWW-Authenticate`` challenge."""
        out = []
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for value in values:
                headers = {header: value, "Accept": "text/html" if header == "Cookie" else "*/*"}
                async with http.get(self.systems[name].url + "/", headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    out.append((resp.status, resp.headers.get("WWW-Authenticate", "")))
        return out

    # -- throughput -----------------------------------------------------------------------------------

    def wrk_settings(self) -> WrkSettings:
        a = self.args
        base = WrkSettings(connections=a.connections, threads=a.threads, duration=a.duration)
        if a.pin == "on":
            return WrkSettings(**{**base.__dict__, "pin_cpu": "1"})
        if a.pin == "off" or not self.use_wrk or (os.cpu_count() or 1) < 2:
            return base
        # Try both on the bare proxy and the first sidecar; keep whichever let the systems go faster.
        probe = [n for n in (f"bare-{a.workers}w", "sidecar-redis-cache", "sidecar-memory-1w") if n in self.systems]
        probe = probe[:2]
        trial = {"off": base, "on": WrkSettings(**{**base.__dict__, "pin_cpu": "1"})}
        scores: dict[str, dict[str, float]] = {"off": {}, "on": {}}
        for _ in range(2):
            for mode, settings in trial.items():
                short = WrkSettings(**{**settings.__dict__, "duration": 3.0})
                for name in probe:
                    scores[mode][name] = max(scores[mode].get(name, 0.0), self.load(name, short).rps)
        total = {mode: sum(v.values()) for mode, v in scores.items()}
        choice = "on" if total["on"] > total["off"] else "off"
        self.out["pin_trial"] = {"req_per_s": scores, "chosen": f"taskset -c 1 wrk: {choice}"}
        log(f"wrk pinned to CPU 1 vs not: {scores}; using pin={choice}")
        return trial[choice]

    def load(self, name: str, settings: WrkSettings, cookie_file: Path | None = None) -> WrkResult:
        """One load run against ``name``; also how busy the machine was with processes not ours."""
        run = self.systems[name]
        header = "Cookie" if cookie_file else self.headers.get(name, "Cookie")
        cookie_file = cookie_file or self.cookies.get(name)
        redis_port = self.redis.port if self.redis is not None else None
        ours0, busy0, t0, own0 = self._our_cpu(), stack.busy_seconds(), time.monotonic(), run.cpu()
        if self.use_wrk:
            result = wrkbench.run_wrk(run.url, cookie_file, settings, header=header, redis_port=redis_port)
        else:
            values = [v for v in cookie_file.read_text().splitlines() if v] if cookie_file else []
            result = wrkbench.run_python_load(run.url, values, settings, header=header, redis_port=redis_port)
        ours1, busy1, t1, own1 = self._our_cpu(), stack.busy_seconds(), time.monotonic(), run.cpu()
        if result.requests:
            result.cpu_us_per_request = round(1e6 * (own1 - own0) / result.requests, 1)
        foreign = max(0.0, (busy1 - busy0) - (ours1 - ours0))
        result.other_cpu_pct = round(100 * foreign / ((t1 - t0) * (os.cpu_count() or 1)), 1)
        result.sut_cpu_pct = round(100 * (ours1 - ours0) / ((t1 - t0) * (os.cpu_count() or 1)), 1)
        return result

    @staticmethod
    def _our_cpu() -> float:
        """CPU of this process and everything it started, running or reaped (wrk), in seconds."""
        return stack.cpu_seconds(stack.tree(os.getpid()))

    def throughput(self, wrk: WrkSettings) -> None:
        a = self.args
        # A system and its baseline twin form a group: they run back to back, the twin first every other
        # repetition, so that drift and order hit new and old alike.
        groups = run_groups(list(self.systems), self.out.get("full"))
        names = [n for g in groups for n in g]
        warm = WrkSettings(**{**wrk.__dict__, "duration": a.warmup})
        for name in names:
            if a.warmup > 0:
                self.load(name, warm)
        runs: dict[str, list[WrkResult]] = {n: [] for n in names}
        for rep in range(a.reps):
            for name in run_order(groups, rep):
                result = self.load(name, wrk)
                runs[name].append(result)
                log(
                    f"rep {rep + 1}/{a.reps} {name:26s} {result.rps:7.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                    f"p99 {result.p99_ms:6.1f} ms  non-2xx {result.non2xx}  socket errors {result.socket_errors}  "
                    f"CPU ours {result.sut_cpu_pct}% others {result.other_cpu_pct}%  "
                    f"{result.cpu_us_per_request} µs CPU/request"
                )
        self.out["throughput"] = {
            name: {
                "workers": self.systems[name].workers,
                "credential": self.headers.get(name, "Cookie"),
                **wrkbench.median_of(r),
            }
            for name, r in runs.items()
        }

    def profile(self, wrk: WrkSettings) -> None:
        spy = shutil.which("py-spy")
        if spy is None:
            self.note("--profile: py-spy not on PATH (pip install py-spy); skipped")
            return
        self.out["profile"] = {}
        for name in [n for n in self.systems if n.startswith("sidecar")]:
            run = self.systems[name]
            worker = run.worker_pids()[0]
            raw = self.work / f"profile-{name}.txt"
            seconds = self.args.profile
            spy_proc = subprocess.Popen(
                [spy, "record", "-p", str(worker), "-d", str(int(seconds)), "-r", "250", "-f", "raw", "-o", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.load(name, WrkSettings(**{**wrk.__dict__, "duration": seconds + 1}))
            spy_proc.wait(timeout=60)
            self.out["profile"][name] = report.collapse_profile(raw)
            if raw.exists():
                _paths.RESULTS.mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, _paths.RESULTS / f"profile-{name}.txt")

    # -- memory, invalidation, RSS --------------------------------------------------------------------

    def memory(self) -> None:
        direct = asyncio.run(logins.direct_tokens(self.idp.issuer, "bench.user99999"))
        userinfo = asyncio.run(self._userinfo("sidecar-redis-cache"))
        mem = probes.session_memory(self.redis.port, direct, userinfo)
        if "apache" in self.out.get("logins", {}):
            mem["apache_session"] = probes.redis_memory(self.redis.port, "s:*")
        self.out["redis_memory"] = mem
        log(f"Redis per session: {mem}")

    async def _userinfo(self, name: str) -> dict[str, Any] | None:
        cookie = self.cookies[name].read_text().split()[0]
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.get(self.systems[name].url + "/oauth2/userinfo", headers={"Cookie": cookie}) as resp,
        ):
            return dict(await resp.json()) if resp.status == 200 else None

    async def invalidation(self) -> None:
        """Two replicas with the cache on (``workers`` each): sign out on one, then sign out at the
        provider (back-channel logout to the first); how long until every worker of both says no."""
        a = self.args
        first = self.systems["sidecar-redis-cache"]
        try:
            replica = self.redis_sidecar("sidecar-redis-replica", "replica", a.cache_ttl, self.nginx_url())
        except ProcessError as exc:
            self.note(f"second replica did not start: {str(exc)[:400]}")
            return
        self.started.append(replica)
        replicas = [first, replica]
        meta = self.idp.discovery()
        result: dict[str, Any] = {"cache_ttl": a.cache_ttl, "workers": a.workers}
        try:
            for kind in ("sign_out", "backchannel"):
                try:
                    cookie, browser = await logins.login_one(first.url, f"bench.logout.{kind}", SIDECAR_COOKIE)
                except (logins.LoginFailed, aiohttp.ClientError) as exc:
                    self.note(f"invalidation ({kind}): login failed: {str(exc)[:300]}")
                    continue
                trigger: Callable[[], Awaitable[dict[str, Any]]]
                try:
                    if kind == "sign_out":
                        trigger = functools.partial(probes.sign_out, first, cookie)
                    else:
                        trigger = await probes.prepare_provider_logout(browser, meta["end_session_endpoint"])
                    result[kind] = await probes.invalidation(replicas, cookie, trigger)
                finally:
                    await browser.close()
                log(f"invalidation after {kind}: {result[kind]['latency_ms']} ms")
        finally:
            replica.stop()
            self.started.remove(replica)
        self.out["invalidation"] = result

    def nginx_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    async def rss(self, wrk: WrkSettings) -> None:
        """RSS of the cache-on Redis sidecar (all its processes) before and after ``--rss-sessions`` more
        live sessions, each of them used once afterwards so that the caches hold them."""
        a = self.args
        run = self.systems["sidecar-redis-cache"]
        n = a.rss_sessions
        pass_settings = WrkSettings(**{**wrk.__dict__, "duration": 6.0})
        await asyncio.to_thread(self.load, "sidecar-redis-cache", pass_settings)
        before = probes.rss_total_kib(run)
        log(f"RSS probe: {n} logins into {run.name} ({before['total_kib']} KiB now)")
        # 100 users, each signing in n/100 times on their provider session: the sidecar does a full login
        # every time (new session, token exchange, validation); the provider skips its forms.
        users = [f"bench.rss{i:04d}" for i in range(min(100, n))]
        t0 = time.monotonic()
        batch = await logins.login_repeatedly(run.url, users, -(-n // len(users)), SIDECAR_COOKIE)
        login_seconds = time.monotonic() - t0
        after_logins = probes.rss_total_kib(run)
        cookie_file = wrkbench.write_cookies(self.work / "cookies-rss.txt", batch.cookies)
        used = await asyncio.to_thread(self.load, "sidecar-redis-cache", pass_settings, cookie_file)
        after = probes.rss_total_kib(run)
        growth = after["total_kib"] - before["total_kib"]
        self.out["rss"] = {
            "system": run.name,
            "workers": run.workers,
            "sessions": len(batch.cookies),
            "users": len(users),
            "failures": len(batch.failures),
            "first_failure": batch.failures[0] if batch.failures else None,
            "login_seconds": round(login_seconds, 1),
            "logins_per_second": round(len(batch.cookies) / login_seconds, 1) if login_seconds else None,
            "before_kib": before["total_kib"],
            "after_logins_kib": after_logins["total_kib"],
            "after_use_kib": after["total_kib"],
            "growth_mib": round(growth / 1024, 1),
            "growth_bytes_per_session": round(growth * 1024 / max(1, len(batch.cookies))),
            "per_process_kib": {"before": before["per_process_kib"], "after": after["per_process_kib"]},
            "use_pass": used.as_dict(),
        }
        log(f"RSS: {self.out['rss']['growth_mib']} MiB for {len(batch.cookies)} sessions ({login_seconds:.0f} s)")


def run_groups(systems: Sequence[str], full: Mapping[str, Any] | None) -> list[list[str]]:
    """The systems in the groups that run back to back in every repetition: each with its baseline twin, so that
    drift and order hit new and old alike; and ``--full``'s variant (``full``: its ``variant`` and the system it is
    judged ``against``) with that system, so that the two are not minutes apart on a drifting machine."""
    groups = [[n, *([n + OLD] if n + OLD in systems else [])] for n in systems if not n.endswith(OLD)]
    if full is not None and full["variant"] in systems and full["against"] in systems:
        variant = next(g for g in groups if g[0] == full["variant"])
        groups.remove(variant)
        next(g for g in groups if g[0] == full["against"]).extend(variant)
    return groups


def run_order(groups: Sequence[Sequence[str]], rep: int) -> list[str]:
    """Repetition ``rep``'s order: every system once, each repetition starting one group further along, and
    every other one with each group's members in reverse."""
    turned = [*groups[rep % len(groups) :], *groups[: rep % len(groups)]]
    return [n for g in turned for n in (g if rep % 2 == 0 else reversed(g))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM stops the processes and removes the baseline's worktree like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    bench = Bench(args)
    status = 0
    try:
        out = bench.run()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        elif isinstance(exc, BaselineError):
            print(f"\nbaseline: {exc}", file=sys.stderr)
        elif isinstance(exc, SystemExit) and isinstance(exc.code, str):
            print(f"\n{exc.code}", file=sys.stderr)  # the harness's own verdict: no traceback
        else:
            traceback.print_exc()
        out = bench.out
        out["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        bench.stop_all()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print()
    print(report.markdown(out))
    print(f"\nresults: {args.out}")
    refused = report.non2xx(out)
    if refused and status == 0:
        # Figures of refused requests are not figures of authenticated ones (a 401 storm looks fast).
        print(f"\ninvalid: non-2xx answers from {', '.join(refused)}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
