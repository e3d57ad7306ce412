"""Shared fixtures: no network, and one tiny tagger trained per test session."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.objectstore import object_store  # noqa: F401  (a session's S3 server)
from tests.synthetic import write_corpus

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# the tests' .pt files are their own: no trust notice (tests/test_export.py checks it)
os.environ.setdefault("ANNOTATOR_TRUST_MODELS", "1")

SHARED_CONLLPP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "conllpp"
_LOCAL = ("127.0.0.1", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(sock: socket.socket, address) -> None:
    """Any connection off this machine fails the test that made it."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
        raise AssertionError(f"test tried to open a network connection to {address!r}")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse_lookup)


def _refuse_lookup(host, *args, **kwargs):
    if host in _LOCAL or host is None:
        return _real_getaddrinfo(host, *args, **kwargs)
    raise AssertionError(f"test tried to resolve {host!r}")


_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models: torch threads only add overhead (and thrash when the CPU is shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synthetic_corpus) -> Path:
    """A small offline-preset tagger that really finds PER/ORG/LOC/MISC in synthetic text."""
    from annotator.training.config import resolve_config
    from annotator.training.train import train

    output = tmp_path_factory.mktemp("tiny-model")
    config = resolve_config(
        "offline",
        overrides={
            "max_epochs": 6,
            "hidden_size": 48,
            "word_embedding_dim": 32,
            "min_word_freq": 1,
            "learning_rate": 0.2,
            "batch_size": 16,
            "device": "cpu",
        },
    )
    train(synthetic_corpus, output, config)
    return output / "best-model.pt"


@pytest.fixture(scope="session")
def conllpp_dir() -> Path:
    if not SHARED_CONLLPP.is_dir():
        pytest.skip("../shared/data/conllpp is not beside this checkout")
    return SHARED_CONLLPP
