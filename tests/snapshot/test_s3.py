"""A checkpoint on an S3 API server on localhost (moto's server mode), through s3fs: saved by
one "machine" (a Checkpointer), restored by a fresh reader that shares nothing with it but
the URL and the storage options."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
import s3fs
from helpers import page_aligned
from moto.server import ThreadedMotoServer

from ntshim.memory import PAGE_SIZE as PS
from ntshim.snapshot import Checkpointer, SnapshotError, generations, load, restore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """The storage options of a bucket ``ckpt`` on a local S3 server, with dummy credentials."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).create_bucket(Bucket="ckpt")
        yield {
            "key": "test",
            "secret": "test",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        server.stop()


def test_save_here_restore_there(s3: dict[str, Any]) -> None:
    url = "s3://ckpt/run-1"
    rng = np.random.default_rng(5)
    state = page_aligned((3 * (1 << 20) // 8,), np.float64)  # 3 MiB: a smooth field
    state[:] = np.sin(np.arange(state.size) / 5000.0)
    states = []
    with Checkpointer(url, {"state": state}, compress="zstd", storage_options=s3) as c:
        for _ in range(4):
            for page in rng.choice(state.nbytes // PS, 5, replace=False):
                state[page * PS // 8] += 1.0
            c.save()
            states.append(state.copy())
        c.compact(keep=2)
    with Checkpointer(url, {"state": state}, storage_options=s3) as c:  # reopened, uncompressed
        state[0] = 42.0
        assert c.save().generation == 5
        states.append(state.copy())

    # "another machine": nothing but the URL and the options (not even the writer's client)
    s3fs.S3FileSystem.clear_instance_cache()
    assert generations(url, storage_options=s3) == [3, 4, 5]
    target = page_aligned((state.size,), np.float64)
    restore(url, {"state": target}, storage_options=s3)
    assert np.array_equal(target, states[-1])
    for g in (3, 4):
        assert np.array_equal(load(url, g, storage_options=s3)["state"], states[g - 1])
    objects = sorted(p.rsplit("/", 1)[-1] for p in s3fs.S3FileSystem(**s3).ls("ckpt/run-1"))
    assert objects == [
        "0000000003.base.data",
        "0000000003.manifest",
        "0000000004.delta.data",
        "0000000004.manifest",
        "0000000005.base.data",
        "0000000005.manifest",
    ]


def test_leftovers_and_missing_objects_on_s3(s3: dict[str, Any]) -> None:
    url = "s3://ckpt/run-2"
    state = page_aligned((8 * PS,), np.uint8)
    with Checkpointer(url, {"state": state}, storage_options=s3) as c:
        c.save()
        state[PS] = 3
        c.save()
    fs = s3fs.S3FileSystem(**s3)
    fs.pipe_file("ckpt/run-2/0000000003.delta.data", b"a writer died before its manifest")
    assert generations(url, storage_options=s3) == [1, 2]
    with Checkpointer(url, {"state": state}, storage_options=s3):
        pass
    assert not fs.exists("ckpt/run-2/0000000003.delta.data")
    fs.rm_file("ckpt/run-2/0000000002.delta.data")
    with pytest.raises(SnapshotError, match="data file is missing") as error:
        load(url, storage_options=s3)
    assert (error.value.generation, error.value.file) == (2, "s3://ckpt/run-2/0000000002.delta.data")
    assert load(url, 1, storage_options=s3)["state"].sum() == 0
