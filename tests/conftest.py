"""Shared test fixtures: the ../shared data folder, and skipping GPU tests without CUDA."""
from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# starve DataLoader workers and other processes (CPU tests run about 2x faster).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_flow_cases() -> Path:
    """``../shared/data/flow``: real frame pairs with ground truth (skips when absent)."""
    path = SHARED / "data" / "flow"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real flow cases live in ../shared)")
    return path


@pytest.fixture
def shared_videos() -> Path:
    """``../shared/data/video``: real video clips (skips when absent)."""
    path = SHARED / "data" / "video"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (real video clips live in ../shared)")
    return path


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny tensors: avoids OpenMP contention on a busy machine (several times faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); run on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
