"""Shared fixtures. Offline, always: any hub call hangs or fails here."""

from __future__ import annotations

import os
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """Path of a tiny-profile zoo (see CONTRACTS.md for its layout), built once per session."""
    from evaluation.zoo import build_zoo

    out = tmp_path_factory.mktemp("tiny-zoo") / "zoo"
    build_zoo(out, profile="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the session (started on first use: flows, the evolve flow)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_collection_modifyitems(config, items) -> None:
    """Everything under tests/stack (real servers on loopback) is heavy: `make stack-test` runs it
    with the other tests marked heavy, `make test` runs the rest."""
    stack = Path(__file__).resolve().parent / "stack"
    for item in items:
        if stack in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.heavy)
