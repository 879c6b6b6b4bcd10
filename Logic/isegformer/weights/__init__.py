"""Model weights: the registry, downloads that survive network faults, and the verified cache.

Typical use::

    from isegformer.weights import resolve_model
    path = resolve_model("stcn", progress=callback)      # downloads once, verifies every time
    path = resolve_model("/data/my_finetuned.pth")       # a local file, checked the same way

See ``registry`` (the JSON schema and ``ISEGFORMER_REGISTRY``), ``cache`` (``ISEGFORMER_HOME``,
trust on first use, locks) and ``download`` (resume, retries, Google Drive, proxies).

The names below are imported on first use, so that reading the registry alone
(``isegformer.weights.registry``, e.g. for the Slicer module's model list while its panel is
built) does not import the HTTP stack.
"""
from importlib import import_module

_EXPORTS = {
    "HOME_ENV": "cache", "CacheWriteError": "cache", "ModelCache": "cache", "cache_home": "cache",
    "sha256_file": "cache",
    "DiskFullError": "download", "DownloadFailure": "download", "DownloadOptions": "download",
    "KINDS": "registry", "REGISTRY_ENV": "registry", "ModelEntry": "registry", "Registry": "registry",
    "RegistryError": "registry", "load_registry": "registry",
    "ModelStatus": "resolve", "download_model": "resolve", "model_status": "resolve",
    "resolve_model": "resolve", "verify_local_file": "resolve", "is_weights_path": "resolve",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'isegformer.weights' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
