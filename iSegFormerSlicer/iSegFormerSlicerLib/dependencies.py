"""Installing the module's Python dependencies the way the running Slicer expects.

- The list is ``Resources/requirements.txt`` (floor and cap per package; PyTorch is not in it).
- Slicer 5.12 and later: ``slicer.packaging.load_requirements`` reads it and
  ``slicer.packaging.pip_ensure`` installs what is missing, with Slicer's own progress dialog.
- Slicer 5.10: ``slicer.util.pip_install``, inside a busy progress dialog of the module's
  (Slicer's pip output keeps the application responsive meanwhile).
- PyTorch: the PyTorch extension's ``PyTorchUtilsLogic.installTorch`` (it picks the build for the
  NVIDIA driver), called with only the keyword arguments its installed version accepts, inside a
  busy progress dialog.

Nothing is installed without the user's yes: one confirmation lists every package first (and
the calls below are told not to ask again). The function is Qt-free: dialogs come from
``slicer.util`` (or the ``ui`` object a test passes).
"""
from __future__ import annotations

import contextlib
import logging

import slicer

from . import _, moduleResourcePath, support

REQUESTER = "iSegFormer"


class SlicerDialogs:
    """The confirmation and the busy progress dialog, from slicer.util (the application's)."""

    def confirm(self, text):
        return slicer.util.confirmOkCancelDisplay(text, windowTitle=_("iSegFormer dependencies"))

    @contextlib.contextmanager
    def busy(self, text):
        dialog = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), maximum=0, labelText=text, windowTitle=_("iSegFormer dependencies"))
        dialog.show()
        slicer.app.processEvents()
        try:
            yield
        finally:
            dialog.close()


def requirementsPath():
    return moduleResourcePath("requirements.txt")


def pipRequirements():
    return support().dependencies.read_requirements(requirementsPath())


def missing():
    """(requirement, installed version or None) of torch and the pip packages that need installing."""
    deps = support().dependencies
    return deps.unmet((deps.TORCH, *pipRequirements()))


def install(askConfirmation=True, ui=None):
    """Install what :func:`missing` lists, after asking (unless ``askConfirmation`` is False).

    Returns True when everything is installed afterwards, False when the user said no or the
    PyTorch extension declined. Raises RuntimeError when the PyTorch extension is missing.
    """
    ui = ui or SlicerDialogs()
    deps = support().dependencies
    torchProblems = deps.unmet((deps.TORCH,))
    pipProblems = deps.unmet(pipRequirements())
    if not torchProblems and not pipProblems:
        return True
    if askConfirmation and not slicer.app.testingEnabled():
        text = _(
            "iSegFormer needs these Python packages:\n{problems}\n\nPyTorch is installed by the "
            "PyTorch extension (matching your NVIDIA driver, or the CPU build), the others with "
            "pip. This downloads up to a few GB and takes minutes. Install now?"
        ).format(problems=deps.describe(torchProblems + pipProblems))
        if not ui.confirm(text):
            return False
    if torchProblems and not _installTorch(ui):
        return False
    if pipProblems:
        _pipInstall([req for req, _version in pipProblems], ui)
    return not deps.unmet((deps.TORCH, *pipRequirements()))


def _installTorch(ui):
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError(
            "The PyTorch extension is not installed: install 'PyTorch' from the Extensions "
            "Manager, restart Slicer, and press Install again."
        )
    deps = support().dependencies
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    wanted = {
        "askConfirmation": False,  # asked already, once for everything
        "torchVersionRequirement": deps.TORCH.specifier[len(deps.TORCH.name):],
    }
    arguments = deps.accepted_arguments(torchLogic.installTorch, wanted)
    if "torchVersionRequirement" not in arguments:
        logging.warning("iSegFormer: this PyTorch extension cannot take a version requirement; "
                        "check that it installs torch %s", deps.TORCH.specifier)
    with ui.busy(_("Installing PyTorch (this takes minutes)...")):
        return torchLogic.installTorch(**arguments) is not None


def _pipInstall(requirements, ui):
    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer 5.12 and later
        wanted = {"prompt_install": False, "requester": REQUESTER, "show_progress": True}
        specifiers = [r.specifier for r in requirements]
        if hasattr(packaging, "load_requirements"):  # Slicer's own parser of the module's file
            names = {r.name.lower() for r in requirements}
            specifiers = [req for req in packaging.load_requirements(requirementsPath())
                          if str(getattr(req, "name", req)).lower() in names]
        packaging.pip_ensure(specifiers, **support().dependencies.accepted_arguments(packaging.pip_ensure, wanted))
        return
    with ui.busy(_("Installing Python packages...")):  # Slicer 5.10: no dialog of its own
        slicer.util.pip_install(" ".join(r.specifier for r in requirements))
