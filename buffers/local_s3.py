"""An S3 server on loopback (moto's ``ThreadedMotoServer``) for tests, benchmarks and trying store
URLs without a cloud account: the same protocol (ETags, conditional ``If-Match`` /
``If-None-Match`` puts) as a real bucket, over HTTP on 127.0.0.1.

Needs the ``scale`` extra (``pip install 'zarrl[scale]'``)::

    with LocalS3() as s3:
        url = s3.create_bucket("demo")          # "s3://demo"
        storage = ZarrStorage(1000, path=f"{url}/run.zarr", storage_options=s3.storage_options)
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from typing import Any

_NEEDS = "moto's S3 server needs the scale extra: pip install 'zarrl[scale]'"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalS3:
    """A moto S3 server on 127.0.0.1 at a free port, started by :meth:`start` (or ``with``).

    Args:
        access_key: the credentials the server accepts (moto accepts any).
    """

    def __init__(self, access_key: str = "testing") -> None:
        self.access_key = access_key
        self.endpoint: str | None = None
        self._server: Any = None

    def start(self) -> LocalS3:
        """Starts the server (a thread of this process); returns ``self``."""
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as err:
            raise ImportError(_NEEDS) from err
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stops the server; the buckets and their objects are gone."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def storage_options(self) -> dict[str, str]:
        """The ``storage_options`` of a store URL on this server."""
        if self.endpoint is None:
            raise RuntimeError("LocalS3: start() the server first")
        return {
            "endpoint_url": self.endpoint,
            "region": "us-east-1",
            "access_key_id": self.access_key,
            "secret_access_key": self.access_key,
        }

    def create_bucket(self, name: str) -> str:
        """Creates the bucket ``name``; returns its URL ``s3://name``."""
        if self.endpoint is None:
            raise RuntimeError("LocalS3: start() the server first")
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(request).close()
        return f"s3://{name}"

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
