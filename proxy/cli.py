"""Command line: ``sso-sidecar run | check | redirect-uri --config PATH``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp
from aiohttp import web

from proxy import __version__
from proxy.config.load import load_public_url, load_settings, peek_log_format
from proxy.config.model import Settings
from proxy.errors import ConfigError, ConfigProblem
from proxy.telemetry import logs

log = logging.getLogger("sso_sidecar")


def _print_config_error(exc: ConfigError, path: str) -> None:
    print(f"sso-sidecar: {path}: the config has {len(exc.problems)} problem(s):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_redirect_uri(path: str) -> int:
    try:
        url = load_public_url(path)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return 2
    print(str(url.with_path("/oauth2/callback")))
    return 0


def _load(path: str) -> Settings | None:
    """The settings at ``path``, or None after printing every problem."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        _print_config_error(exc, path)
        return None


def cmd_check(path: str) -> int:
    settings = _load(path)
    if settings is None:
        return 2
    # One clean line per problem: the log lines behind them (retries, the store's outage line) would only
    # repeat what check reports itself.
    logging.getLogger("sso_sidecar").setLevel(logging.CRITICAL)
    return asyncio.run(_check(settings, path))


async def _page_settings(settings: Settings, path: str) -> Settings | None:
    """With ``admin.enabled``: say where the effective ``sso`` section comes from, and return the settings
    with the page's section when it applies one (None when the file's own applies)."""
    from proxy.admin.sync import UNREACHABLE, read_record

    where, record, problem = await read_record(settings)
    if problem == UNREACHABLE:
        print(f"sso settings:      UNKNOWN: the settings page's record in {where} cannot be read from here.")
        print("                   A running sidecar with this config keeps what it applied, and one that has")
        print("                   applied nothing does not proxy, until the record can be read.")
        print("                   Checking the config file's own sso section below.")
        return None
    if problem is not None:
        # What a sidecar with this config and this store meets: it refuses the record and, having applied
        # nothing, does not proxy (never falling back to the file's sso). That is no usable config.
        print(f"sso settings:      REFUSED: the settings page's record in {where} cannot be used ({problem}).")
        print("                   A sidecar with this config that has applied nothing does not proxy until the")
        print("                   record can be used or Forget page settings replaces it.")
        print("                   Checking the config file's own sso section below.")
        raise ConfigError([ConfigProblem("admin", f"the record in {where} cannot be used: {problem}")])
    if record is None or record.applied is None:
        print(f"sso settings:      from the config file (the settings page has applied nothing; {where})")
        return None
    applied = record.applied
    state = "enabled" if applied.enabled else "disabled"
    print(f"sso settings:      from the settings page: version {record.version}, SSO {state} by {applied.by} "
          f"at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(applied.at))}, stored in {where}.")  # fmt: skip
    print("                   They replace the config file's sso section until Forget page settings.")
    return load_settings(path, sso=record.sso_override())


async def _check(settings: Settings, path: str) -> int:
    from proxy.oidc.client import OIDCClient
    from proxy.oidc.verify import verify_provider

    problems: list[str] = []
    out = print
    out(f"config:            {settings.source} (version {settings.digest})")
    if settings.admin.enabled:
        try:
            settings = await _page_settings(settings, path) or settings
        except ConfigError as exc:
            problems.extend(f"(settings page) {p}" for p in exc.problems)
    out(f"public URL:        {settings.public_url}")
    out(f"upstream:          {settings.upstream.url}")
    out(f"session store:     {settings.session.store}"
        + (f" ({settings.session.redis_url})" if settings.session.store == "redis" else ""))  # fmt: skip
    out("")
    out("Register these URIs at the identity provider:")
    out(f"  redirect URI:                {settings.redirect_uri}")
    out(f"  post-logout redirect URI:    {settings.post_logout_redirect_uri}")
    out(f"  back-channel logout URI:     {settings.backchannel_logout_uri}")
    out("")
    if not settings.sso.enabled:
        out("SSO:               disabled (pass-through; identity headers are stripped)")
    else:
        sso = settings.sso
        out(f"issuer:            {sso.issuer_url}")
        out(f"client id:         {sso.client_id}")
        out(f"scopes:            {' '.join(sso.scopes)}")
        timeout = aiohttp.ClientTimeout(total=sso.http_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            # The same checks a reload must pass, so both report a problem in the same words.
            found = await verify_provider(OIDCClient(sso, settings.redirect_uri, http))
            problems.extend(str(p) for p in found.problems)
            meta = found.metadata
            if meta is not None:
                out(f"  authorization endpoint:    {meta.authorization_endpoint}")
                out(f"  token endpoint:            {meta.token_endpoint}")
                out(f"  userinfo endpoint:         {meta.userinfo_endpoint or '(none)'}")
                out(f"  end-session endpoint:      {meta.end_session_endpoint or '(none: no RP-initiated logout)'}")
                out(f"  JWKS:                      {meta.jwks_uri}")
                out(f"  ID token algorithms:       {' '.join(meta.id_token_signing_alg_values_supported)}")
                out(f"  back-channel logout:       {'supported' if meta.backchannel_logout_supported else 'no'}")
                out(f"  signing keys:              {found.signing_keys} usable in the JWKS")
                if found.credentials_ok:
                    out("  client credentials:        accepted by the token endpoint")
    out("")
    _print_routes(settings)
    out("")
    out("Identity headers sent to the upstream:")
    for header, claim in settings.headers:
        out(f"  {header}: {claim}")
    _check_console_identity(settings, out)
    if problems:
        print("", file=sys.stderr)
        print(f"sso-sidecar: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    out("")
    out("OK: the config is usable.")
    return 0


# Who the sample assertion of ``check`` is about: nobody real (check signs no one in).
SAMPLE_IDENTITY = {
    "sub": "sample-subject",
    "preferred_username": "sample.user",
    "email": "sample.user@example.com",
    "email_verified": True,
    "name": "Sample User",
    "groups": ["sample-group"],
}


def _check_console_identity(settings: Settings, out: Callable[[str], None]) -> None:
    """What the console is told besides the headers: the assertion (settings, JWKS URL, a sample's claims, never a
    signature), the roles, the tokens passed."""
    from proxy.auth.console import ConsoleIdentity
    from proxy.auth.identity import IdentityHeaders
    from proxy.config.model import JWKS_PATH
    from proxy.runtime.state import console_headers

    a, roles, tokens = settings.assertion, settings.roles, settings.pass_tokens
    if a is None and roles is None and not tokens.enabled:
        return
    identity = IdentityHeaders(
        settings.headers, settings.header_list_separator, also_stripped=console_headers(settings)
    )
    console = ConsoleIdentity(settings, identity)
    out("")
    out("Identity for the console:")
    if a is not None and console.keyring is not None:
        keyring = console.keyring
        out(f"  signed assertion:  {a.header}{' (Bearer)' if a.header == 'Authorization' else ''}, {a.algorithm}")
        out(f"    keys:            {keyring.source}")
        out(f"    signing key:     {keyring.signing.kid}")
        if a.algorithm != "HS256":
            out(f"    JWKS:            {settings.url_for(JWKS_PATH)} ({len(keyring.jwks['keys'])} key(s) published)")
        out(f"    issuer (iss):    {str(settings.public_url).rstrip('/')}")
        out(f"    audience (aud):  {a.audience}")
        out(f"    lifetime:        {int(a.lifetime)}s, never past the session's end")
        sample = console.sample(SAMPLE_IDENTITY, time.time())
        out("    sample claims (for a made-up user; nothing is signed here):")
        for line in json.dumps(sample, indent=2, ensure_ascii=False).splitlines():
            out("      " + line)
    if roles is not None:
        default = ", ".join(roles.default) or "(none)"
        out(f"  roles:             {roles.header}, {len(roles.rules)} rule(s), default: {default}")
        for rule in roles.rules:
            who = [*(f"group {g}" for g in rule.groups), *(f"email {e}" for e in rule.emails)]
            out(f"    {rule.role}: {', '.join(who)}")
    for what, header in (("access token", tokens.access_token), ("ID token", tokens.id_token)):
        if header:
            out(f"  {what}:{' ' * (17 - len(what))}{header}{' (Bearer)' if header == 'Authorization' else ''}")


def _print_routes(settings: Settings) -> None:
    """Who may reach which paths, in the order a request is matched (the first matching route wins)."""
    from proxy.auth import routes

    rows = routes.table(settings.routes, settings.access)
    if not settings.routes:
        print(f"Access (every path): {rows[-1]['access']}")
        return
    print("Routes, as they will be applied (the first that matches a request wins):")
    for row in rows:
        path = row["path"] if row["path"] is not None else "(any other path)"
        methods = ",".join(row["methods"]) if row["methods"] else "any method"
        print(f"  {row['route']:<11} {path}  [{methods}]")
        print(f"              who: {row['access']}")
        if row["route"] != routes.TOP_LEVEL:
            print(f"              sign-in: {routes.sign_in_words(row)}")


def cmd_run(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        # Before logging is set up: still in the format the file asks for, so a JSON pipeline sees it.
        lines = [f"sso-sidecar: {path}: the config has {len(exc.problems)} problem(s):"]
        lines += [f"  - {problem}" for problem in exc.problems]
        log_format = peek_log_format(path)
        if log_format == "json":
            lines = [f"{path}: {problem}" for problem in exc.problems]
        logs.print_problems(lines, log_format)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    # From here until the event loop (or the worker supervisor) installs its SIGHUP handler, a SIGHUP
    # waits, blocked and pending: it neither kills the process nor is lost (``watch.triggers`` and
    # ``workers.run_workers`` unblock it). Before the first log line, so one who saw it may reload.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        _can_listen(settings)
    except OSError as exc:
        _cannot_listen(settings, exc)
        return 1
    log.info("sso-sidecar %s listening on %s:%d, upstream %s, sso %s, %d worker(s)", __version__,
             settings.listen_host, settings.listen_port, settings.upstream.url,
             "on" if settings.sso.enabled else "off", settings.workers)  # fmt: skip
    if settings.workers == 1:
        return _serve(settings, path, worker=0)
    from proxy.workers import run_workers

    return run_workers(settings.workers, lambda index: _serve(settings, path, worker=index))


_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _can_listen(settings: Settings) -> None:
    """Bind ``listen`` once, as the server will (every address the host names), and let go: a port that is
    taken or an address that is not this host's is an ``OSError`` before anything says "listening"."""
    host, port = settings.listen_host, settings.listen_port
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server sockets
            if settings.workers > 1:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address)


def _cannot_listen(settings: Settings, exc: OSError) -> None:
    reason = exc.strerror.lower() if isinstance(exc, OSError) and exc.strerror else str(exc)
    log.error("cannot listen on %s:%d: %s (listen)", settings.listen_host, settings.listen_port, reason)


async def _draining(app: web.Application) -> None:
    log.info("shutting down: no new connections; in-flight requests finish (up to 30 s)")


def _serve(settings: Settings, path: str, *, worker: int) -> int:
    """Serve until stopped; the exit status."""
    from proxy.app import create_app
    from proxy.runtime.watch import triggers
    from proxy.telemetry.accesslog import BATCH, AccessLogger

    app = create_app(settings, worker=worker)
    # Everything imported and built so far lives as long as the process: keep it out of the collector's
    # full passes, which would otherwise walk these objects again and again under load.
    gc.collect()
    gc.freeze()
    app.cleanup_ctx.append(triggers(path))  # SIGHUP and the config/secret file watcher
    app.on_shutdown.append(_draining)
    try:
        web.run_app(
            app,
            host=settings.listen_host,
            port=settings.listen_port,
            access_log_class=AccessLogger,
            print=None,
            shutdown_timeout=30.0,
            reuse_port=settings.workers > 1,
            handle_signals=True,
        )
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        # Taken between the check in cmd_run and the bind (another process was quicker).
        _cannot_listen(settings, exc)
        return 1
    finally:
        BATCH.flush()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sso-sidecar", description="OpenID Connect SSO in front of a web console.")
    parser.add_argument("--version", action="version", version=f"sso-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "serve (SIGHUP reloads the config, SIGTERM drains and exits)"),
        ("check", "validate the config, fetch discovery, print what to register at the provider"),
        ("redirect-uri", "print the redirect URI (needs only public_url)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, metavar="PATH", help="the YAML config file")
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args.config)
    if args.command == "check":
        return cmd_check(args.config)
    return cmd_redirect_uri(args.config)


if __name__ == "__main__":
    sys.exit(main())
