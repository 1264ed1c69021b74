"""Services for the scale-out tests (``docs/scale-out.md``), each started by the tests
themselves and skipped with the reason only when the ``scale`` extra is not installed:

- ``s3``: moto's S3 server on 127.0.0.1 (a free port, once per session) and a fresh bucket per
  test: ``(url_prefix, storage_options)``;
- ``ray_local``: a local Ray (``num_cpus=2``, no dashboard), started once per session.

Run under pytest-xdist (``pytest -n 2 --dist loadgroup``; not in the ``dev`` extra: on the shared
2-core box it was slower than one process), every worker gets an equal share of the cores for
torch and the processes it starts, and the tests that must not overlap one another (``SERIAL``)
run one after the other on one worker.
"""

from __future__ import annotations

import itertools
import os

import pytest

# Tests that must not run beside each other: the Ray ones (one local Ray per session, and its
# workers take both cores), the soak, and the tests that SIGKILL or race real processes on
# timing (writers, readers, collectors). A module path, or ``path::test name``.
SERIAL = (
    "tests/buffers/test_soak.py",
    "tests/buffers/test_durability.py",
    "tests/buffers/test_object_store.py",
    "tests/buffers/test_segments.py",
    "tests/buffers/test_multiprocess_collectors.py",
    "tests/buffers/test_sampler_state.py::test_owner_priorities_survive_worker_extends",
    "tests/engine/test_resume.py",
    "tests/engine/test_cli.py::test_command_line_exit_codes_in_real_processes",
)
# The longest single tests, started first so that they do not end the run alone on one worker.
FIRST = ("tests/test_readme.py::test_every_readme_command_block_runs_as_written",)


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # an xdist worker: its share of the cores, for torch and for its subprocesses
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if "ray_local" in getattr(item, "fixturenames", ()) or {path, item.nodeid} & set(SERIAL):
            item.add_marker(pytest.mark.xdist_group("serial"))
    items.sort(key=lambda item: item.nodeid not in FIRST)


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
