"""Installing the module's dependencies: Resources/requirements.txt, Slicer's packaging API where
it exists (5.12+), slicer.util.pip_install on 5.10, PyTorchUtils' installTorch with only the
arguments its version accepts; nothing without the user's yes, nothing without a progress dialog.

Slicer's wheel has neither ``slicer.packaging`` (it is in the application's Python) nor the
PyTorch extension, so those are stand-ins that record their calls, with the signatures of
Slicer's Base/Python/slicer/packaging.py and of PyTorchUtils.py (2023 and before).
"""
from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

import pytest

from isegformer.errors import InvalidInputError
from isegformer.slicer_support import dependencies as deps

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_file_is_the_modules_list_and_matches_pyproject():
    import tomllib

    listed = deps.read_requirements(ROOT / "Resources" / "requirements.txt")
    assert listed == deps.PIP_REQUIREMENTS
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in listed:
        assert requirement.specifier in project, f"{requirement.specifier} differs from pyproject.toml"
    assert all(r.name != "torch" for r in listed)  # PyTorch comes from the PyTorch extension


def test_a_requirement_without_floor_and_cap_is_refused(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nscipy>=1.10,<2\nnumpy==1.26\n")
    with pytest.raises(InvalidInputError, match="line 3"):
        deps.read_requirements(path)


def test_accepted_arguments_follow_the_signature():
    def old(self=None, askConfirmation=False, forceComputationBackend=None):
        pass

    def new(askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        pass

    def anything(**kwargs):
        pass

    wanted = {"askConfirmation": False, "torchVersionRequirement": ">=2.1,<3"}
    assert deps.accepted_arguments(old, wanted) == {"askConfirmation": False}
    assert deps.accepted_arguments(new, wanted) == wanted
    assert deps.accepted_arguments(anything, wanted) == wanted


class Dialogs:
    def __init__(self, answer=True):
        self.answer, self.asked, self.busy_while = answer, [], []
        self.open = False

    def confirm(self, text):
        self.asked.append(text)
        return self.answer

    @contextlib.contextmanager
    def busy(self, text):
        self.open = True
        self.busy_while.append(text)
        try:
            yield
        finally:
            self.open = False


@pytest.fixture
def install_env(slicer_env, monkeypatch):
    """The module's dependencies step with torch and scipy 'missing' and the installers recorded."""
    from iSegFormerSlicerLib import dependencies

    slicer = slicer_env.slicer
    installed = {"torch": None, "scipy": None, "SimpleITK": "2.5.0", "requests": "2.32.0",
                 "threadpoolctl": "3.5.0"}
    monkeypatch.setattr(deps, "installed_version", lambda name, lookup=None: installed.get(name))
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)
    calls = []
    dialogs = Dialogs()

    def pip_install(text):
        calls.append(("pip_install", text, dialogs.open))
        installed["scipy"] = "1.14.0"

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)

    def torch_module(signature):
        class PyTorchUtilsLogic:
            pass

        if signature == "2023":
            def installTorch(self, askConfirmation=False, forceComputationBackend=None,
                             torchVersionRequirement=None, torchvisionVersionRequirement=None):
                calls.append(("installTorch", askConfirmation, torchVersionRequirement, dialogs.open))
                installed["torch"] = "2.5.0"
                return types.SimpleNamespace(__version__="2.5.0")
        else:  # before torchVersionRequirement existed
            def installTorch(self, askConfirmation=False, forceComputationBackend=None):
                calls.append(("installTorch", askConfirmation, None, dialogs.open))
                installed["torch"] = "2.5.0"
                return types.SimpleNamespace(__version__="2.5.0")
        PyTorchUtilsLogic.installTorch = installTorch
        return types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic)

    yield types.SimpleNamespace(module=dependencies, slicer=slicer, calls=calls, dialogs=dialogs,
                                installed=installed, torch_module=torch_module, monkeypatch=monkeypatch)
    sys.modules.pop("PyTorchUtils", None)


@pytest.mark.parametrize("signature", ["2023", "2022"])
def test_slicer_5_10_installs_after_one_yes_inside_progress_dialogs(install_env, signature):
    env = install_env
    env.monkeypatch.setitem(sys.modules, "PyTorchUtils", env.torch_module(signature))
    env.monkeypatch.delattr(env.slicer, "packaging", raising=False)
    assert env.module.missing()
    assert env.module.install(askConfirmation=True, ui=env.dialogs)
    assert len(env.dialogs.asked) == 1 and "torch>=2.1,<3" in env.dialogs.asked[0] and "scipy>=1.10,<2" in env.dialogs.asked[0]
    requirement = ">=2.1,<3" if signature == "2023" else None
    assert env.calls == [("installTorch", False, requirement, True), ("pip_install", "scipy>=1.10,<2", True)]
    assert not env.module.missing()


def test_nothing_is_installed_when_the_user_says_no(install_env):
    env = install_env
    env.monkeypatch.setitem(sys.modules, "PyTorchUtils", env.torch_module("2023"))
    env.dialogs.answer = False
    assert not env.module.install(askConfirmation=True, ui=env.dialogs)
    assert env.calls == [] and env.dialogs.busy_while == []


def test_slicer_5_12_uses_its_packaging_api_with_the_requirements_file(install_env):
    env = install_env
    env.monkeypatch.setitem(sys.modules, "PyTorchUtils", env.torch_module("2023"))
    loaded = []

    def load_requirements(path):
        loaded.append(Path(path))
        return [types.SimpleNamespace(name=r.name, spec=r.specifier) for r in deps.read_requirements(path)]

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        env.calls.append(("pip_ensure", [r.spec for r in requirements], prompt_install, requester, show_progress))
        env.installed["scipy"] = "1.14.0"

    env.monkeypatch.setattr(env.slicer, "packaging", types.SimpleNamespace(
        load_requirements=load_requirements, pip_ensure=pip_ensure), raising=False)
    assert env.module.install(askConfirmation=True, ui=env.dialogs)
    assert loaded and loaded[0].name == "requirements.txt" and loaded[0].is_file()
    # asked once by the module; pip_ensure shows its own progress and is told not to ask again
    assert env.calls[1] == ("pip_ensure", ["scipy>=1.10,<2"], False, "iSegFormer", True)
    assert len(env.dialogs.asked) == 1


def test_a_missing_pytorch_extension_says_what_to_do(install_env):
    env = install_env
    env.monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        env.module.install(askConfirmation=False, ui=env.dialogs)
    assert env.calls == []
