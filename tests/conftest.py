"""Suite-wide settings.

The tests use tiny tensors, for which one thread is fastest; more threads only spin against each other
(and against other processes) on a small, shared CI machine.
"""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _satseg_cache(tmp_path_factory):
    """Exports made by `segment` on the CPU are cached here, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("satseg-cache")
    previous = os.environ.get("SATSEG_CACHE")
    os.environ["SATSEG_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SATSEG_CACHE", None)
    else:
        os.environ["SATSEG_CACHE"] = previous
