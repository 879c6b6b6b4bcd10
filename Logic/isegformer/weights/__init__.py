"""Model weights: the registry, downloads that survive network faults, and the verified cache.

Typical use::

    from isegformer.weights import resolve_model
    path = resolve_model("stcn", progress=callback)      # downloads once, verifies every time
    path = resolve_model("/data/my_finetuned.pth")       # a local file, checked the same way

See ``registry`` (the JSON schema and ``ISEGFORMER_REGISTRY``), ``cache`` (``ISEGFORMER_HOME``,
trust on first use, locks) and ``download`` (resume, retries, Google Drive, proxies).
"""
from .cache import HOME_ENV, CacheWriteError, ModelCache, cache_home, sha256_file  # noqa: F401
from .download import DiskFullError, DownloadFailure, DownloadOptions  # noqa: F401
from .registry import (  # noqa: F401
    KINDS,
    REGISTRY_ENV,
    ModelEntry,
    Registry,
    RegistryError,
    load_registry,
)
from .resolve import (  # noqa: F401
    ModelStatus,
    download_model,
    model_status,
    resolve_model,
    verify_local_file,
)
