"""Services for the scale-out tests (``docs/scale-out.md``), each started by the tests
themselves and skipped with the reason only when the ``scale`` extra is not installed:

- ``s3``: moto's S3 server on 127.0.0.1 (a free port, once per session) and a fresh bucket per
  test: ``(url_prefix, storage_options)``;
- ``ray_local``: a local Ray (``num_cpus=2``, no dashboard), started once per session.
"""

from __future__ import annotations

import itertools
import logging
import socket
import urllib.request

import pytest

_SCALE = "pip install 'zarrl[scale]' (make setup installs it)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server running for the session."""
    server_mod = pytest.importorskip(
        "moto.server", reason=f"moto[server] is not installed: {_SCALE}"
    )
    pytest.importorskip("obstore", reason=f"obstore is not installed: {_SCALE}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


_BUCKETS = itertools.count()


@pytest.fixture
def s3(moto_endpoint) -> tuple[str, dict]:
    """A new, empty bucket: ``("s3://bucket", storage_options)``."""
    bucket = f"zarrl-test-{next(_BUCKETS)}"
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/{bucket}", method="PUT"))
    options = {
        "endpoint_url": moto_endpoint,
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    return f"s3://{bucket}", options


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the session (2 CPUs, no dashboard); shut down at the end."""
    ray = pytest.importorskip("ray", reason=f"ray is not installed: {_SCALE}")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
