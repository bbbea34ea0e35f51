"""The processes of one benchmark run: upstream (nginx), Redis, the dev IdP, Apache + mod_auth_openidc,
the bare aiohttp proxy and sidecars. Each writes its config into the run's temp directory and logs to a
file there; nothing touches the system's own nginx or Apache configuration.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _paths

from support.idp import DevIdP, RegisteredClient, idp_config
from support.procs import LOOPBACK, Process, ProcessError, free_port, http_status
from support.redis_server import RedisServer
from support.sidecar import Sidecar, sidecar_command

BODY_SIZE = 200
APACHE_MODULES = Path("/usr/lib/apache2/modules")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------------
# Prerequisites


def missing_packages(*, with_apache: bool, with_wrk: bool = True, with_redis: bool = True) -> list[str]:
    """Debian packages this run needs and does not have."""
    missing = []
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        missing.append("nginx")
    if with_wrk and shutil.which("wrk") is None:
        missing.append("wrk")
    if (with_redis or with_apache) and shutil.which("redis-server") is None:
        missing.append("redis-server")
    if with_apache:
        if shutil.which("apache2") is None and not Path("/usr/sbin/apache2").exists():
            missing.append("apache2")
        if not (APACHE_MODULES / "mod_auth_openidc.so").exists():
            missing.append("libapache2-mod-auth-openidc")
    return missing


def install(packages: list[str]) -> None:
    """One ``apt-get install`` for everything missing (Debian/Ubuntu, as root or with sudo)."""
    if not packages:
        return
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} (apt-get)", flush=True)
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------------------------------
# Process-tree accounting (/proc)


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:  # threads come and go (Apache's event MPM): one gone must not hide the rest
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of these processes and of their children they have reaped, in seconds.

    Counting reaped children keeps the sum from dropping when a process of the tree exits (an Apache
    child the MPM retires, a finished wrk): its CPU moves to its parent's ``cutime``/``cstime``.
    """
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLK_TCK


def busy_seconds() -> float:
    """CPU time every CPU of the machine spent not idle, from ``/proc/stat``."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(m.group(1)) if m else 0


def listening_pids(port: int) -> list[int]:
    """Processes holding a listening socket on ``port`` (one per SO_REUSEPORT worker)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})


@dataclass
class Running:
    """A started system under test: where it listens and which processes are it."""

    name: str
    url: str
    port: int
    proc: Process
    workers: int = 1
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def pids(self) -> list[int]:
        return tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def worker_pids(self) -> list[int]:
        return listening_pids(self.port) or [self.proc.pid]

    def stop(self) -> None:
        self.proc.stop(timeout=15)


# --------------------------------------------------------------------------------------------------
# Upstream: nginx with one fixed body


def start_nginx(work: Path) -> Running:
    d = work / "nginx"
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    body = ("x" * (BODY_SIZE - 1)) + "\n"
    conf = d / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""\
            daemon off;
            master_process on;
            worker_processes 1;
            pid {d}/nginx.pid;
            error_log {d}/error.log warn;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                keepalive_timeout 120s;
                client_body_temp_path {d}/tmp/body;
                proxy_temp_path {d}/tmp/proxy;
                fastcgi_temp_path {d}/tmp/fastcgi;
                uwsgi_temp_path {d}/tmp/uwsgi;
                scgi_temp_path {d}/tmp/scgi;
                server {{
                    listen {LOOPBACK}:{port} backlog=4096;
                    location / {{
                        default_type text/plain;
                        return 200 "{body[:-1]}\\n";
                    }}
                }}
            }}
            """
        )
    )
    proc = Process("nginx", ["nginx", "-c", str(conf), "-p", str(d)], log_dir=d).start()
    proc.wait_for_http(f"http://{LOOPBACK}:{port}/", timeout=15)
    return Running("nginx", f"http://{LOOPBACK}:{port}", port, proc)


# --------------------------------------------------------------------------------------------------
# Redis and the dev IdP (the test suite's helpers)


def start_redis(work: Path) -> RedisServer:
    return RedisServer(work / "redis").start()


def static_client(client_id: str, bases: list[str], *, backchannel: str | None = None) -> RegisteredClient:
    """A client the dev IdP is configured with (never evicted, unlike a dynamic registration)."""
    metadata: dict[str, Any] = {
        "client_id": client_id,
        "client_secret": secrets.token_urlsafe(32),
        "redirect_uris": [b + "/oauth2/callback" for b in bases],
        "post_logout_redirect_uris": [b + "/oauth2/signed_out" for b in bases],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    if backchannel:
        metadata["backchannel_logout_uri"] = backchannel
        metadata["backchannel_logout_session_required"] = True
    return RegisteredClient(
        client_id=client_id,
        client_secret=metadata["client_secret"],
        redirect_uris=tuple(metadata["redirect_uris"]),
        metadata=metadata,
    )


def start_idp(work: Path, clients: list[RegisteredClient]) -> DevIdP:
    # Token lifetimes long enough that no session refreshes during the run; refresh tokens as usual.
    ttl = {"AccessToken": 3600, "IdToken": 3600, "RefreshToken": 86400, "Session": 86400, "Grant": 86400}
    config = idp_config(ttl=ttl, clients=[dict(c.metadata) for c in clients])
    return DevIdP(config, work / "idp").start(timeout=60)


# --------------------------------------------------------------------------------------------------
# The API clients' token issuer (bench/issuer.py)


@dataclass
class TokenIssuer:
    """``bench/issuer.py``: its issuer URL (once ``wait`` saw it ready), and the file of ``Bearer <JWT>``
    lines it minted."""

    audience: str
    tokens: Path
    count: int
    proc: Process
    issuer: str = ""

    def wait(self, timeout: float = 60) -> TokenIssuer:
        self.issuer = self.proc.wait_for_line(r"^READY (\S+)$", timeout=timeout).group(1)
        return self

    def stop(self) -> None:
        self.proc.stop(timeout=10)


def start_issuer(work: Path, *, tokens: int, audience: str) -> TokenIssuer:
    """Started, not waited for (``wait``): it makes its key and tokens while the dev IdP starts."""
    d = work / "issuer"
    d.mkdir(parents=True, exist_ok=True)
    out = d / "tokens.txt"
    args = [sys.executable, str(_paths.BENCH / "issuer.py"), "--tokens", str(tokens), "--audience", audience]
    proc = Process("issuer", [*args, "--out", str(out)], log_dir=d, cwd=_paths.REPO).start()
    return TokenIssuer(audience, out, tokens, proc)


# --------------------------------------------------------------------------------------------------
# The bare aiohttp proxy


def start_bare(work: Path, upstream: str, workers: int) -> Running:
    port = free_port()
    args = [
        sys.executable,
        str(_paths.BENCH / "bare_proxy.py"),
        "--listen",
        f"{LOOPBACK}:{port}",
        "--upstream",
        upstream,
        "--workers",
        str(workers),
    ]
    proc = Process(f"bare-{workers}w", args, log_dir=work, cwd=_paths.REPO).start()
    proc.wait_for_line(r"^READY", timeout=30)
    run = Running(f"bare aiohttp ({workers}w)", f"http://{LOOPBACK}:{port}", port, proc)
    run.workers = len(run.worker_pids())
    return run


# --------------------------------------------------------------------------------------------------
# The sidecar


@dataclass(frozen=True)
class SidecarSource:
    """Which sso-sidecar source tree a sidecar process runs, and how it is started: ``command`` (before
    ``run --config FILE``) in ``cwd`` with ``env`` on top of this environment. ``bench/baseline.py``
    checks with a probe that this combination imports ``tree/proxy`` before anything starts."""

    label: str  # "new" (the working tree) or "old" (the baseline)
    tree: Path
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    how: str = ""  # "console script ...", "python -m proxy with PYTHONPATH=..."


def working_tree_source() -> SidecarSource:
    """The working tree's sidecar, started the way the test suite starts it (``support.sidecar``)."""
    command = tuple(sidecar_command())
    how = f"console script {command[0]}" if len(command) == 1 else f"{' '.join(command)} in {_paths.REPO}"
    return SidecarSource("new", _paths.REPO, command, _paths.REPO, {}, how)


class _SourcedSidecar(Sidecar):
    """``support.sidecar.Sidecar`` started from a given source (command, working directory, environment)."""

    def __init__(self, config: Mapping[str, Any], work_dir: Path, *, name: str, source: SidecarSource) -> None:
        super().__init__(config, work_dir, env=source.env, name=name)
        self.source = source

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> Sidecar:
        args = [*self.source.command, "run", "--config", str(self.config_path)]
        self.proc = Process(self.name, args, env=self.env, cwd=self.source.cwd, log_dir=self.dir).start()
        if wait:
            self.wait_healthy(timeout)
        return self


def check_started_as(pid: int, source: SidecarSource) -> None:
    """The running process has the working directory and ``PYTHONPATH`` its source's probe was run with."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd")).resolve()
        environ = dict(
            item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
        )
        argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    except OSError:
        return  # it exited: starting it has failed loudly already
    wanted = source.env.get("PYTHONPATH", os.environ.get("PYTHONPATH"))
    problems = []
    if cwd != source.cwd.resolve():
        problems.append(f"working directory {cwd}, not {source.cwd}")
    if environ.get("PYTHONPATH") != wanted:
        problems.append(f"PYTHONPATH {environ.get('PYTHONPATH')!r}, not {wanted!r}")
    if source.command[-1] not in argv:
        problems.append(f"command line {argv[:4]}, not {list(source.command)}")
    if problems:
        raise ProcessError(f"sidecar pid {pid} ({source.label}) did not start as probed: {'; '.join(problems)}")


def start_sidecar(
    work: Path,
    name: str,
    *,
    idp: DevIdP,
    client: RegisteredClient,
    upstream: str,
    cookie_secret: str,
    store: str,
    redis_url: str | None,
    workers: int,
    cache_ttl: str | None,
    port: int | None = None,
    public_url: str | None = None,
    log_level: str = "info",
    sso_enabled: bool = True,
    sso_extra: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    source: SidecarSource | None = None,
) -> Running:
    """``sso-sidecar run`` through its real CLI, from ``source`` (default: the working tree, as the tests
    start it). ``workers`` and ``session.cache_ttl`` are left out of the config when None; ``sso_extra``
    adds keys to ``sso`` (``extra_issuers``), ``extra`` top-level keys (``assertion``, ``roles``, ``routes``); a
    config the sidecar refuses raises ``ProcessError`` with its log."""
    port = port or free_port()
    session: dict[str, Any] = {
        "store": store,
        "cookie_secret": cookie_secret,
        "lifetime": "8h",
        "idle_timeout": "1h",
    }
    if redis_url:
        session["redis_url"] = redis_url
    if cache_ttl is not None:
        session["cache_ttl"] = cache_ttl
    config: dict[str, Any] = {
        "listen": f"{LOOPBACK}:{port}",
        "public_url": public_url or f"http://{LOOPBACK}:{port}",
        "upstream": upstream,
        "sso": {
            "enabled": sso_enabled,
            "issuer_url": idp.issuer,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            **(sso_extra or {}),
        },
        "session": session,
        "log_level": log_level,
        **(extra or {}),
    }
    if workers != 1:
        config["workers"] = workers
    sidecar = (
        Sidecar(config, work / name, name=name)
        if source is None
        else _SourcedSidecar(config, work / name, name=name, source=source)
    )
    sidecar.start(timeout=30)
    assert sidecar.proc is not None
    run = Running(name, sidecar.url, port, sidecar.proc)
    run.extra["sidecar"] = sidecar
    if source is not None:
        run.extra["source"] = source.label
        try:
            check_started_as(sidecar.proc.pid, source)
        except ProcessError:
            run.stop()
            raise
    run.workers = _settle_workers(run, workers)
    if run.workers != workers:
        run.notes.append(f"asked for {workers} workers, {run.workers} process(es) listen")
    return run


def _settle_workers(run: Running, wanted: int) -> int:
    """Workers bind one after another: wait (briefly) until ``wanted`` listen."""
    deadline = time.monotonic() + 10
    while True:
        n = len(listening_pids(run.port))
        if n >= wanted or time.monotonic() > deadline:
            return max(n, 1)
        time.sleep(0.1)


def config_refused(exc: ProcessError, key: str) -> bool:
    """Did the sidecar exit listing a config problem that names ``key`` (``  - session.cache_ttl: ...``)?"""
    return re.search(rf"^\s+- .*\b{re.escape(key)}\b", str(exc), re.MULTILINE) is not None


def refused_keys(exc: ProcessError) -> list[str]:
    """The config keys a sidecar's exit listed as problems (``  - sso.enabled: unknown key`` -> ``sso.enabled``)."""
    return sorted(set(re.findall(r"^\s+- ([A-Za-z_][\w.\[\]]*):", str(exc), re.MULTILINE)))


# --------------------------------------------------------------------------------------------------
# Apache 2.4 + mod_auth_openidc


def start_apache(
    work: Path,
    *,
    idp: DevIdP,
    client: RegisteredClient,
    port: int,
    upstream: str,
    redis_port: int,
    mpm: Mapping[str, int] | None = None,
) -> Running:
    """Apache in the foreground with its own ServerRoot, PidFile and port (``-DFOREGROUND``), event MPM
    with Debian's stock sizing, sessions server side in Redis."""
    d = work / "apache"
    (d / "run").mkdir(parents=True, exist_ok=True)
    mpm = {
        "StartServers": 2,
        "MinSpareThreads": 25,
        "MaxSpareThreads": 75,
        "ThreadLimit": 64,
        "ThreadsPerChild": 25,
        "MaxRequestWorkers": 150,
        "MaxConnectionsPerChild": 0,
        **(mpm or {}),
    }
    modules = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("authz_user_module", "mod_authz_user.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("mime_module", "mod_mime.so"),
        ("headers_module", "mod_headers.so"),
        ("proxy_module", "mod_proxy.so"),
        ("proxy_http_module", "mod_proxy_http.so"),
        ("auth_openidc_module", "mod_auth_openidc.so"),
    ]
    load = "\n".join(f"LoadModule {name} {APACHE_MODULES / so}" for name, so in modules if so)
    conf = d / "httpd.conf"
    conf.write_text(
        f"""# generated by bench/stack.py
ServerRoot "{d}"
PidFile "{d}/run/httpd.pid"
DefaultRuntimeDir "{d}/run"
Mutex file:{d}/run default
{load}
User www-data
Group www-data
Listen {LOOPBACK}:{port}
ServerName {LOOPBACK}:{port}
ErrorLog "{d}/error.log"
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %O" common
CustomLog "{d}/access.log" common
TypesConfig /etc/mime.types
{chr(10).join(f"{k} {v}" for k, v in mpm.items())}
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5

OIDCProviderMetadataURL {idp.issuer}/.well-known/openid-configuration
OIDCClientID {client.client_id}
OIDCClientSecret {client.client_secret}
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI http://{LOOPBACK}:{port}/oauth2/callback
OIDCCryptoPassphrase {secrets.token_urlsafe(32)}
OIDCScope "openid profile email"
OIDCPKCEMethod S256
OIDCSessionType server-cache
OIDCCacheType redis
OIDCRedisCacheServer {LOOPBACK}:{redis_port}
OIDCSessionInactivityTimeout 3600
OIDCSessionMaxDuration 28800
OIDCRemoteUserClaim preferred_username
OIDCPassClaimsAs headers
OIDCStateMaxNumberOfCookies 20 true

ProxyPass / {upstream}/
ProxyPassReverse / {upstream}/
<Location />
    AuthType openid-connect
    Require valid-user
</Location>
"""
    )
    binary = shutil.which("apache2") or "/usr/sbin/apache2"
    check = subprocess.run([binary, "-t", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise ProcessError(f"apache2 -t refused {conf}:\n{check.stdout}{check.stderr}")
    proc = Process("apache", [binary, "-f", str(conf), "-DFOREGROUND"], log_dir=d).start()
    try:
        proc.wait_for(lambda: http_status(f"http://{LOOPBACK}:{port}/") in (302, 401, 200), "an answer", 30)
    except ProcessError as exc:
        raise ProcessError(f"{exc}\n{_tail(d / 'error.log')}") from None
    run = Running("apache+mod_auth_openidc", f"http://{LOOPBACK}:{port}", port, proc)
    run.workers = max(1, len(run.pids()) - 1)  # child processes (the parent only supervises)
    run.extra["error_log"] = str(d / "error.log")
    run.extra["mpm"] = dict(mpm)
    return run


def versions(*, with_apache: bool) -> dict[str, str]:
    """What ran: Debian package versions (and the sidecar's own)."""

    def pkg(name: str) -> str:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else "?"

    names = ["nginx", "redis-server", "wrk"]
    if with_apache:
        names += ["apache2", "libapache2-mod-auth-openidc"]
    found = {name: pkg(name) for name in names}
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    sidecar = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__version__)"],
        capture_output=True,
        text=True,
        cwd=_paths.REPO,
    ).stdout.strip()
    return {"sso-sidecar": sidecar or "?", **found, "node": node or "?"}


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""
