"""Which click models exist (the bundled registry) and which the current settings still need."""
import importlib.util
import json
import logging
import os

from . import _, ensureIsegformerImportable

DEFAULT_MODEL = "isegformer_swin_base_oaizib"
STCN_MODEL = "stcn"


def clickModelNames():
    """Click models of the bundled registry, read as JSON (no package import), default first."""
    ensureIsegformerImportable()
    spec = importlib.util.find_spec("isegformer")
    names = []
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "resources", "models.json")
        try:
            with open(path, encoding="utf-8") as file:
                names = [m["name"] for m in json.load(file)["models"] if m.get("kind") == "click_model"]
        except (OSError, ValueError, KeyError, TypeError):
            logging.warning("iSegFormer: could not read the model registry at %s", path)
    if DEFAULT_MODEL in names:
        names.remove(DEFAULT_MODEL)
    return [DEFAULT_MODEL] + names


def isCheckpointPath(name):
    """True when the click model setting is a file path rather than a registry name."""
    return os.sep in name or "/" in name or name.endswith((".pth", ".pt", ".ckpt"))


def modelsToDownload(model, propagation):
    """Registry names the settings need that are not in the cache yet (imports the package)."""
    from isegformer.weights.registry import load_registry
    from isegformer.weights.resolve import model_status

    registry = load_registry()
    needed = [] if isCheckpointPath(model) else [model]
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
        return _("Checkpoint file: ") + model
    if missing:
        return _("Not downloaded yet: ") + ", ".join(missing)
    return _("Cached and ready: ") + model
