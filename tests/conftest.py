"""Services for the scale-out tests (``docs/scale-out.md``), each started by the tests
themselves and skipped with the reason only when the ``scale`` extra is not installed:

- ``s3``: moto's S3 server on 127.0.0.1 (a free port, once per session) and a fresh bucket per
  test: ``(url_prefix, storage_options)``;
- ``ray_local``: a local Ray (``num_cpus=2``, no dashboard), started once per session.
"""

from __future__ import annotations

import itertools

import pytest

_SCALE = "pip install 'zarrl[scale]' (make setup installs it)"


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server on loopback running for the session (``zarrl.buffers.local_s3``)."""
    pytest.importorskip("moto.server", reason=f"moto[server] is not installed: {_SCALE}")
    pytest.importorskip("obstore", reason=f"obstore is not installed: {_SCALE}")
    from zarrl.buffers.local_s3 import LocalS3

    with LocalS3() as server:
        yield server


_BUCKETS = itertools.count()


@pytest.fixture
def s3(moto_endpoint) -> tuple[str, dict]:
    """A new, empty bucket: ``("s3://bucket", storage_options)``."""
    url = moto_endpoint.create_bucket(f"zarrl-test-{next(_BUCKETS)}")
    return url, moto_endpoint.storage_options


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray for the session (2 CPUs, no dashboard); shut down at the end."""
    ray = pytest.importorskip("ray", reason=f"ray is not installed: {_SCALE}")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
