"""Redis set-ups for high availability, as local processes on free loopback ports: a server with AOF
persistence, a master + replica watched by three Sentinels (quorum 2), a Redis Cluster of three masters
with a replica each, and a TLS server.

Test code talks to them with ``command()``, a raw RESP client, so that what the tests observe does not
depend on the client library the sidecar uses.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from support.procs import LOOPBACK, Process, ProcessError, free_port
from support.redis_server import ping, redis_server_binary
from support.waiting import eventually_sync

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


def wait_until(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """``eventually_sync``, with a server that is not answering (yet, or any more) counting as "not yet"."""
    eventually_sync(check, what=what, timeout=timeout, ignoring=(OSError, RedisReplyError))


def caught_up(master_port: int, replica_ports: Sequence[int], timeout: float = 15.0) -> int:
    """Until each replica has applied every write its master had taken when called; how many there are.

    Not ``WAIT``: it waits for the writes of the connection that sends it, and a test's connection has
    written nothing (it returns at once, whatever the replicas have). After a diskless full sync a
    master streams to a replica only once that replica's first acknowledgement arrives, up to a second.
    """
    target = int(info(master_port, "replication")["master_repl_offset"])
    for port in replica_ports:
        wait_until(lambda p=port: int(info(p, "replication").get("slave_repl_offset", "-1")) >= target,
                   f"replica {port} to reach offset {target} of master {master_port}", timeout)  # fmt: skip
    return len(replica_ports)


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

    def __init__(self, work_dir: Path, master_name: str, master_port: int, *, quorum: int, down_after_ms: int = 1000):
        super().__init__(work_dir, name="sentinel")
        self.master_name = master_name
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\n"
            f"bind {LOOPBACK}\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {master_name} {LOOPBACK} {master_port} {quorum}\n"
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

    def _table(self, *args: object) -> list[dict[str, str]]:
        reply = self.command("SENTINEL", *args)
        assert isinstance(reply, list)
        out = []
        for flat in reply:
            assert isinstance(flat, list)
            out.append({text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat), 2)})
        return out

    def replicas(self) -> list[dict[str, str]]:
        return self._table("REPLICAS", self.master_name)

    def other_sentinels(self) -> list[dict[str, str]]:
        return self._table("SENTINELS", self.master_name)


class SentinelGroup:
    """One master and one replica (``--replicaof``), watched as ``m`` by three Sentinels with quorum 2.

    Two Sentinels must agree that the master is down, and a majority of the three must elect the one
    that promotes the replica: a failover works with any one Sentinel lost, and no lone Sentinel that
    lost sight of the master can cause one.
    """

    MASTER_NAME = "m"
    QUORUM = 2

    def __init__(self, work_dir: Path, sentinels: int = 3) -> None:
        fast_sync = ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.master = RedisNode(work_dir / "master", args=fast_sync, name="redis-master")
        self.replica = RedisNode(
            work_dir / "replica",
            args=[*fast_sync, "--replicaof", LOOPBACK, str(self.master.port)],
            name="redis-replica",
        )
        self.sentinels = [
            SentinelNode(work_dir / f"sentinel{i}", self.MASTER_NAME, self.master.port, quorum=self.QUORUM)
            for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER_NAME}/0"

    @property
    def nodes(self) -> list[RedisNode]:
        return [self.master, self.replica]

    @property
    def sentinel(self) -> SentinelNode:
        """A Sentinel that is running."""
        return next(s for s in self.sentinels if s.alive)

    def start(self, timeout: float = 30.0) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        wait_until(lambda: info(self.replica.port, "replication").get("master_link_status") == "up",
                   "replica in sync", timeout)  # fmt: skip
        for sentinel in self.sentinels:
            sentinel.start()
        others = len(self.sentinels) - 1

        def ready(sentinel: SentinelNode) -> bool:
            # SENTINEL FAILOVER answers NOGOODSLAVE until a Sentinel has seen the replica healthy, and a
            # failover needs the Sentinels to know each other (they meet on the master's hello channel).
            replica_ok = any(r["port"] == str(self.replica.port) and "s_down" not in r["flags"]
                             and r.get("master-link-status") == "ok" for r in sentinel.replicas())  # fmt: skip
            quorum = text(sentinel.command("SENTINEL", "CKQUORUM", self.MASTER_NAME))
            return replica_ok and len(sentinel.other_sentinels()) == others and quorum.startswith("OK")

        for sentinel in self.sentinels:
            wait_until(lambda s=sentinel: ready(s), f"Sentinel {sentinel.port} to know the replica and its peers",
                       timeout)  # fmt: skip
        return self

    def replicate(self, timeout: float = 15.0) -> int:
        """Until the replica has applied every write the master has taken so far; how many replicas did."""
        return caught_up(self.master.port, [self.replica.port], timeout)

    def wait_for_new_master(self, old_port: int, timeout: float = 30.0) -> int:
        """Until every running Sentinel names another master and that server says it is one; its port."""

        def moved() -> int | None:
            ports = {s.master_port() for s in self.sentinels if s.alive}
            if len(ports) != 1:
                return None
            (port,) = ports
            return port if port != old_port and info(port, "replication").get("role") == "master" else None

        wait_until(moved, "failover to a new master", timeout)
        return self.sentinel.master_port()

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.master):
            node.stop(5)


class RedisCluster:
    """A Redis Cluster: ``masters`` masters with ``replicas`` replicas each, joined by
    ``redis-cli --cluster create --cluster-replicas``. With a replica per master it survives the loss of
    any one master: the other masters (a majority) vote for its replica, which takes over its slots."""

    NODE_TIMEOUT_MS = 2000

    def __init__(self, work_dir: Path, masters: int = 3, replicas: int = 1) -> None:
        self.masters, self.replicas = masters, replicas
        self.nodes = []
        for i in range(masters * (1 + replicas)):
            bus = free_port()
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(work_dir / f"node{i}" / "nodes.conf"),
                "--cluster-port", str(bus),  # the default, port + 10000, may be taken or out of range
                "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
                "--appendonly", "no",
                "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            self.nodes.append(RedisNode(work_dir / f"node{i}", args=args, name=f"cluster{i}"))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{port}" for port in self.ports)

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def role(self, port: int) -> str:
        return info(port, "replication")["role"]

    def master_ports(self) -> list[int]:
        """The running nodes that are masters now."""
        return [n.port for n in self.nodes if n.alive and self.role(n.port) == "master"]

    def replica_ports_of(self, master_port: int) -> list[int]:
        return [n.port for n in self.nodes if n.alive and n.port != master_port
                and info(n.port, "replication").get("master_port") == str(master_port)]  # fmt: skip

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        create = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise ProcessError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node says cluster_state:ok and knows every other one; every replica is in sync."""
        live = [n.port for n in self.nodes if n.alive]

        def healthy(port: int) -> bool:
            if info(port, "cluster").get("cluster_state") != "ok":
                return False
            known = text(command(port, "CLUSTER", "NODES")).splitlines()
            connected = [line for line in known if " connected" in line and "fail" not in line.split()[2]]
            if len(connected) != len(live):
                return False
            replication = info(port, "replication")
            return replication["role"] == "master" or replication.get("master_link_status") == "up"

        for port in live:
            wait_until(lambda p=port: healthy(p), f"cluster node {port} healthy", timeout)
        assert len(self.master_ports()) == self.masters

    def replicate(self, timeout: float = 15.0) -> None:
        """Until every master's replicas have applied every write it has taken so far."""
        for port in self.master_ports():
            replicas = self.replica_ports_of(port)
            assert caught_up(port, replicas, timeout) == self.replicas, f"master {port}: replicas {replicas}"

    def wait_for_failover(self, dead_port: int, replica_port: int, timeout: float = 30.0) -> None:
        """Until the dead master's replica is a master and the cluster is whole again (without it)."""
        wait_until(lambda: self.role(replica_port) == "master", f"replica {replica_port} promoted", timeout)
        live = [n.port for n in self.nodes if n.alive]
        for port in live:
            wait_until(lambda p=port: info(p, "cluster").get("cluster_state") == "ok",
                       f"cluster_state:ok on {port} after the failover", timeout)  # fmt: skip
        assert dead_port not in live

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
