"""Shared test fixtures: where the golden fixtures and the sample data live.

``ISEGFORMER_GOLDEN`` (default ../shared/golden) holds arrays computed by the reference code;
``ISEGFORMER_DATA`` (default ../shared/data) holds real sample volumes. Tests that need either
skip with a clear message only when the folder is absent.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _folder(env_var: str, default: Path) -> Path:
    value = os.environ.get(env_var)
    return Path(value).expanduser().resolve() if value else default.resolve()


GOLDEN_DIR = _folder("ISEGFORMER_GOLDEN", PROJECT_ROOT.parent / "shared" / "golden")
DATA_DIR = _folder("ISEGFORMER_DATA", PROJECT_ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_DIR.is_dir():
        pytest.skip(
            f"golden fixtures not found at {GOLDEN_DIR}: set ISEGFORMER_GOLDEN to the folder "
            "of reference fixtures (shared/golden) to run the fidelity tests"
        )
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(
            f"sample data not found at {DATA_DIR}: set ISEGFORMER_DATA to the sample "
            "volumes folder (shared/data) to run these tests"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def weights_formula(golden_dir: Path):
    """The golden set's own numpy weight generator (fill(manifest) -> {key: array})."""
    path = golden_dir / "weights_formula.py"
    spec = importlib.util.spec_from_file_location("golden_weights_formula", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def torch_thread_count():
    """For one test: call the fixture's value with a torch thread count; the process's count
    is restored after the test."""
    import torch

    threads = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine a second spinning thread only
    burns CPU time. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_stcn_networks():
    """STCN and FusionNet with torch's default initialisation (seeds 0 and 1), in eval mode;
    a fresh pair per test module, so that no module sees another's changes."""
    import torch

    from isegformer.propagation.stcn import FusionNet, STCNNetwork

    torch.manual_seed(0)
    network = STCNNetwork().eval()
    torch.manual_seed(1)
    fusion = FusionNet().eval()
    return network, fusion


@pytest.fixture
def slicer_env():
    """A fresh real MRML scene (Slicer's own code, the slicer-core wheel) with the
    iSegFormerSlicer module imported from the source tree.

    Yields a namespace: ``slicer`` (the real ``slicer`` package, completed by
    slicer_standins.py with ``mrmlScene``, ``app``, ``modules`` and the
    ScriptedLoadableModule base classes), ``scene`` (this test's ``slicer.mrmlScene``),
    ``module`` (``iSegFormerSlicer``), ``app`` (the ``slicer.app`` stand-in) and
    ``slicer_standins`` (``new_scene()`` there replaces the scene, e.g. to load a saved one).
    Skips, saying why, only where slicer-core is not installed.
    """
    import types

    import slicer_standins

    if not slicer_standins.available():
        pytest.skip(slicer_standins.SKIP_REASON)
    slicer = slicer_standins.install()
    scene = slicer_standins.new_scene()
    module = slicer_standins.import_module()
    yield types.SimpleNamespace(slicer=slicer, scene=scene, module=module, app=slicer.app,
                                slicer_standins=slicer_standins)
    scene.Clear(1)
