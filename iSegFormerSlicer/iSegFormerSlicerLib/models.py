"""Which click models exist (the package's registry) and which the current settings still need."""
import logging
import os

from . import _, ensureIsegformerImportable

DEFAULT_MODEL = "isegformer_swin_base_oaizib"
STCN_MODEL = "stcn"


def _registry():
    """The registry the package uses (``ISEGFORMER_REGISTRY`` or the bundled one). Reading it
    imports only the registry reader of the package (no torch, no HTTP stack)."""
    ensureIsegformerImportable()
    from isegformer.weights.registry import load_registry

    return load_registry()


def clickModelNames():
    """The registry's click models (entries the click engine can load), the default first when
    the registry has it."""
    try:
        names = [entry.name for entry in _registry() if entry.kind == "click_model"]
    except Exception as err:  # a broken site registry: the status line says why (modelStatusText)
        logging.warning("iSegFormer: could not read the model registry: %s", err)
        return [DEFAULT_MODEL]
    if DEFAULT_MODEL in names:
        names.remove(DEFAULT_MODEL)
        names.insert(0, DEFAULT_MODEL)
    return names or [DEFAULT_MODEL]


def isCheckpointPath(name):
    """True when the click model setting is a file path rather than a registry name (the
    package's own rule, :func:`isegformer.weights.resolve.is_weights_path`)."""
    ensureIsegformerImportable()
    from isegformer.weights.resolve import is_weights_path

    return is_weights_path(name)


def modelsToDownload(model, propagation):
    """Registry names the settings need that are not in the cache yet (imports the package).
    A click model name that the registry lacks, or that is not a click model, is an error
    that says so (never "ready")."""
    from isegformer.weights.resolve import model_status

    from . import invalidInput

    registry = _registry()
    needed = []
    if not isCheckpointPath(model):
        if model not in registry:
            known = ", ".join(e.name for e in registry if e.kind == "click_model") or "none"
            raise invalidInput(
                f"The click model {model!r} is not in the model registry ({registry.source}); "
                f"its click models: {known}. Choose one of them, or a checkpoint file.")
        if registry.get(model).kind != "click_model":
            raise invalidInput(
                f"{model!r} is a {registry.get(model).kind.replace('_', ' ')} entry of the model "
                "registry, not a click model this module can run: choose another click model.")
        needed.append(model)
    if propagation == "stcn":
        needed.append(STCN_MODEL)
    return [n for n in needed if n in registry and not model_status(registry.get(n), verify=False).cached]


def downloadModels(names, progress=None):
    """Download registry entries into the cache (with progress and cancel). Worker-safe."""
    from isegformer.weights.resolve import download_model

    return [str(download_model(name, progress=progress)) for name in names]


def statusText(model, missing):
    """What the Setup section says about the click model, given what still needs downloading."""
    if isCheckpointPath(model):
        if not os.path.isfile(os.path.expanduser(model)):
            return _("No checkpoint file at: ") + model
        return _("Checkpoint file: ") + model
    if missing:
        return _("Not downloaded yet: ") + ", ".join(missing)
    return _("Cached and ready: ") + model
