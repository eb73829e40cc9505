"""A real S3 API on loopback (moto's server on 127.0.0.1, a free port) and remote-store factories
shared by the remote cache tests."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback for the whole session; AWS_* set so s3fs (and any
    deploy-build subprocess) talks to it."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_bucket(endpoint: str) -> str:
    """A fresh bucket; returns its s3:// URL with a prefix."""
    import fsspec

    name = f"cache-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}/team"


def remote_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "folder":
        return (tmp_path / "shared").as_uri()
    return new_bucket(request.getfixturevalue("s3_endpoint"))


def open_tiered(root: Path, url: str, mode: str = "readwrite", key: bytes | None = None,
                log: Any = None) -> Any:
    from orchestrator.store.remote import Remote
    from orchestrator.store.tiered import TieredStore

    remote = Remote(url, mode, key, {"skip_instance_cache": True} if url.startswith("s3") else {},
                    **({"log": log} if log else {}))
    remote.probe()
    return TieredStore(root, remote)
