"""Redis set-ups for high availability, as local processes on free loopback ports: a server with AOF
persistence, a master + replica + Sentinel group, a three-master Redis Cluster, and a TLS server.

Test code talks to them with ``command()``, a raw RESP client, so that what the tests observe does not
depend on the client library the sidecar uses.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from support.procs import LOOPBACK, Process, ProcessError, free_port
from support.redis_server import ping, redis_server_binary

Reply = bytes | int | list["Reply"] | None


class RedisReplyError(RuntimeError):
    """Redis answered with an error (``-ERR ...``)."""


# --------------------------------------------------------------------------------------------------
# A raw RESP client


def _encode(args: Sequence[object]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read(f: BinaryIO) -> Reply:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return bytes(rest)
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)
        return bytes(data[:-2])
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(f) for _ in range(count)]
    raise RedisReplyError(f"unexpected reply {line!r}")


def command(port: int, *args: object, timeout: float = 5.0) -> Reply:
    """One command on a fresh connection to 127.0.0.1:``port``; the decoded reply."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s, s.makefile("rb") as f:
        s.sendall(_encode(args))
        return _read(f)


def text(reply: Reply) -> str:
    assert isinstance(reply, bytes), reply
    return reply.decode()


def info(port: int, section: str) -> dict[str, str]:
    """``INFO section`` (or ``CLUSTER INFO`` for section "cluster") as a dict."""
    raw = command(port, "CLUSTER", "INFO") if section == "cluster" else command(port, "INFO", section)
    pairs = (line.split(":", 1) for line in text(raw).splitlines() if ":" in line)
    return {k: v for k, v in pairs}


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, RedisReplyError):
            pass
        if time.monotonic() > deadline:
            raise ProcessError(f"no {what} within {timeout}s")
        time.sleep(interval)


def session_keys(ports: Iterable[int], pattern: str = "sso:*") -> dict[str, tuple[int, int]]:
    """Every key matching ``pattern`` on these servers: key -> (port, PTTL in ms)."""
    found: dict[str, tuple[int, int]] = {}
    for port in ports:
        cursor: Reply = b"0"
        while True:
            reply = command(port, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            assert isinstance(reply, list)
            cursor, keys = reply
            assert isinstance(cursor, bytes) and isinstance(keys, list)
            for key in keys:
                pttl = command(port, "PTTL", key)
                assert isinstance(key, bytes) and isinstance(pttl, int)
                found[key.decode()] = (port, pttl)
            if cursor == b"0":
                break
    return found


# --------------------------------------------------------------------------------------------------
# Servers


class RedisNode:
    """One redis-server in its own directory: ``start()``, ``stop()`` (SIGTERM: a graceful shutdown that
    flushes the AOF), ``kill()`` (a crash), ``start()`` again on the same port and directory."""

    def __init__(self, work_dir: Path, *, args: Sequence[str] = (), port: int | None = None, name: str = "redis"):
        self.dir = Path(work_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.name = f"{name}-{self.port}"
        self.proc: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    def command_line(self) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(self.dir),
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "notice",
            *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> RedisNode:
        if self.alive:
            return self
        self.proc = Process(self.name, self.command_line(), log_dir=self.dir).start()
        self.proc.wait_for(self.ready, f"{self.name} ready", timeout)
        return self

    def ready(self) -> bool:
        return ping(self.port)

    def command(self, *args: object, timeout: float = 5.0) -> Reply:
        return command(self.port, *args, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.stop(timeout)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def logs(self) -> str:
        return self.proc.logs() if self.proc is not None else ""


def aof_server(work_dir: Path) -> RedisNode:
    """Every write fsynced to the append-only file before it is acknowledged: nothing acknowledged is
    lost across a restart."""
    return RedisNode(work_dir, args=["--appendonly", "yes", "--appendfsync", "always"], name="redis-aof")


class SentinelNode(RedisNode):
    """``redis-server sentinel.conf --sentinel``; the config file must stay writable (Sentinel rewrites it)."""

    def __init__(self, work_dir: Path, master_name: str, master_port: int, *, down_after_ms: int = 1000):
        super().__init__(work_dir, name="sentinel")
        self.master_name = master_name
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {master_name} {LOOPBACK} {master_port} 1\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 5000\n",
            encoding="utf-8",
        )

    def command_line(self) -> list[str]:
        return [redis_server_binary(), str(self.conf), "--sentinel", "--loglevel", "notice"]

    def master_port(self) -> int:
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        assert isinstance(reply, list) and isinstance(reply[1], bytes)
        return int(reply[1])

    def replicas(self) -> list[dict[str, str]]:
        reply = self.command("SENTINEL", "REPLICAS", self.master_name)
        assert isinstance(reply, list)
        out = []
        for flat in reply:
            assert isinstance(flat, list)
            out.append({text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)})
        return out


class SentinelGroup:
    """One master, one replica (``--replicaof``) and one Sentinel (quorum 1) watching them as ``m``."""

    MASTER_NAME = "m"

    def __init__(self, work_dir: Path) -> None:
        fast_sync = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.master = RedisNode(work_dir / "master", args=fast_sync, name="redis-master")
        self.replica = RedisNode(
            work_dir / "replica",
            args=[*fast_sync, "--replicaof", LOOPBACK, str(self.master.port)],
            name="redis-replica",
        )
        self.sentinel = SentinelNode(work_dir / "sentinel", self.MASTER_NAME, self.master.port)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{LOOPBACK}:{self.sentinel.port}/{self.MASTER_NAME}/0"

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica]

    def start(self, timeout: float = 20.0) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        wait_until(lambda: info(self.replica.port, "replication").get("master_link_status") == "up",
                   "replica in sync", timeout)  # fmt: skip
        self.sentinel.start()

        def replica_known() -> bool:
            replicas = self.sentinel.replicas()
            return any(r["port"] == str(self.replica.port) and "s_down" not in r["flags"]
                       and r.get("master-link-status") == "ok" for r in replicas)  # fmt: skip

        # SENTINEL FAILOVER answers NOGOODSLAVE until Sentinel has seen the replica healthy.
        wait_until(replica_known, "replica known to Sentinel", timeout)
        return self

    def replicate(self, timeout_ms: int = 2000) -> int:
        """``WAIT 1``: block until the replica acknowledged every write so far; how many replicas did."""
        acked = self.master.command("WAIT", 1, timeout_ms, timeout=timeout_ms / 1000 + 5)
        assert isinstance(acked, int)
        return acked

    def wait_for_new_master(self, old_port: int, timeout: float = 20.0) -> int:
        """Until Sentinel names another master and that server says it is one; its port."""

        def moved() -> bool:
            port = self.sentinel.master_port()
            return port != old_port and info(port, "replication").get("role") == "master"

        wait_until(moved, "failover to a new master", timeout)
        return self.sentinel.master_port()

    def stop(self) -> None:
        for node in (self.sentinel, self.replica, self.master):
            node.stop(5)


class RedisClusterNodes:
    """``n`` masters with ``--cluster-enabled yes``, joined by ``redis-cli --cluster create``; no replicas."""

    def __init__(self, work_dir: Path, n: int = 3) -> None:
        self.nodes = []
        for i in range(n):
            bus = free_port()
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(work_dir / f"node{i}" / "nodes.conf"),
                "--cluster-port", str(bus),  # the default, port + 10000, may be taken or out of range
                "--cluster-node-timeout", "2000",
                "--appendonly", "no",
            ]  # fmt: skip
            self.nodes.append(RedisNode(work_dir / f"node{i}", args=args, name=f"cluster{i}"))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{port}" for port in self.ports)

    def start(self, timeout: float = 30.0) -> RedisClusterNodes:
        for node in self.nodes:
            node.start()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in self.ports), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if create.returncode != 0:
            raise ProcessError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        for port in self.ports:

            def cluster_ok(p: int = port) -> bool:
                return info(p, "cluster").get("cluster_state") == "ok"

            wait_until(cluster_ok, f"cluster_state:ok on {port}", timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(5)


# --------------------------------------------------------------------------------------------------
# TLS


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sso-sidecar test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(paths[2], 0o600)
    return paths


class TLSRedisNode(RedisNode):
    """TLS only (``--port 0 --tls-port``), with a password; clients need not present a certificate."""

    def __init__(self, work_dir: Path, password: str) -> None:
        super().__init__(work_dir, name="redis-tls")
        self.password = password
        self.ca, self.cert, self.key = write_tls_files(self.dir / "tls")

    @property
    def url(self) -> str:
        return f"rediss://{LOOPBACK}:{self.port}/0"

    def command_line(self) -> list[str]:
        line = super().command_line()
        line[line.index("--port") + 1] = "0"
        return [
            *line,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "no",
            "--requirepass", self.password,
        ]  # fmt: skip

    def ready(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex((LOOPBACK, self.port)) == 0
