"""The model registry: which weight files (and sample data) exist, and where to fetch them.

The registry is a JSON file. The bundled one is ``Resources/models.json`` in the source tree;
an identical copy ships inside the package (``isegformer/resources/models.json``) so that a
wheel finds it too. ``ISEGFORMER_REGISTRY`` names a file that replaces it completely (tests,
and sites that mirror the weights on an internal server).

Schema (``schema_version`` 1)::

    {"schema_version": 1,
     "models": [{"name": "stcn", "kind": "propagation", "version": "s012",
                 "filename": "stcn.pth", "url": "https://...", "mirrors": ["https://..."],
                 "size": 123 | null, "sha256": "<64 hex>" | null,
                 "license": "...", "paper": "...", "citation": "...",
                 "description": "..."}]}

``size`` and ``sha256`` are ``null`` where unknown; the cache then trusts the first download and
verifies every later use against the hash it recorded (see :mod:`isegformer.weights.cache`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import urlsplit

from ..errors import WeightsError
from ..json_io import read_json_bounded

REGISTRY_ENV = "ISEGFORMER_REGISTRY"
SCHEMA_VERSION = 1
#: ``baseline_click_model``: a click model of another architecture (the paper's RITM baseline),
#: downloadable for comparisons with the reference code but never offered as a click model.
KINDS = ("click_model", "baseline_click_model", "propagation", "fusion", "sample_volume",
         "sample_label", "dataset")

# Every validator matches the whole string (fullmatch): "$" would accept a trailing newline.
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_FILENAME_BYTES = 200  # leaves room for ".part" and the temporary names within 255
_WINDOWS_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)
_FORBIDDEN_IN_FILENAMES = set('/\\<>:"|?*')
_MAX_SIZE = 1 << 44  # 16 TiB: larger than any model or dataset file
_REQUIRED = ("name", "kind", "version", "filename", "url")
_OPTIONAL_TEXT = ("license", "paper", "citation", "description")
_KNOWN_KEYS = set(_REQUIRED) | set(_OPTIONAL_TEXT) | {"mirrors", "size", "sha256"}


class RegistryError(WeightsError):
    """The model registry file is missing, not valid JSON, or has an invalid entry."""


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable file of the registry."""

    name: str
    kind: str
    version: str
    filename: str
    url: str
    mirrors: tuple[str, ...] = ()
    size: Optional[int] = None
    sha256: Optional[str] = None
    license: str = ""
    paper: str = ""
    citation: str = ""
    description: str = ""

    @property
    def urls(self) -> tuple[str, ...]:
        """The primary URL first, then the mirrors, in the order they are tried."""
        return (self.url, *self.mirrors)


class Registry:
    """The parsed registry: entries by name, in file order."""

    def __init__(self, entries: list[ModelEntry], source: Path):
        self.source = source
        self._entries = {entry.name: entry for entry in entries}

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise WeightsError(
                f"unknown model {name!r} in the registry {self.source}. Known models: "
                f"{', '.join(self._entries) or '(none)'}. Run `isegformer models` to list them, "
                "or pass the path of a local weights file instead of a name."
            ) from None


def bundled_registry_path() -> Path:
    """The registry shipped with the package (wheel, editable install, or Slicer module)."""
    package_dir = Path(__file__).resolve().parent.parent
    candidates = [
        package_dir / "resources" / "models.json",  # inside the package: wheels
        package_dir.parent / "Resources" / "models.json",  # Slicer: Resources beside the package
        package_dir.parent.parent / "Resources" / "models.json",  # source tree: Logic/../Resources
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RegistryError(
        "the bundled model registry (models.json) was not found; looked in: "
        + ", ".join(str(c) for c in candidates)
        + f". Reinstall isegformer, or set {REGISTRY_ENV} to a registry file."
    )


def registry_path() -> Path:
    """``ISEGFORMER_REGISTRY`` if set, else the bundled registry."""
    override = os.environ.get(REGISTRY_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise RegistryError(
                f"{REGISTRY_ENV} points to {path}, which is not a file. Fix the path, or unset "
                f"{REGISTRY_ENV} to use the bundled registry."
            )
        return path
    return bundled_registry_path()


def load_registry(path: str | os.PathLike[str] | None = None) -> Registry:
    """Read and validate a registry file (default: :func:`registry_path`)."""
    source = Path(path).expanduser() if path is not None else registry_path()
    try:
        data = read_json_bounded(source, f"the model registry {source}", error=RegistryError,
                                 max_bytes=8 << 20,
                                 advice="Fix the file, or use the bundled registry.")
    except FileNotFoundError:
        raise RegistryError(f"the model registry {source} does not exist. Check the path, or use "
                            "the bundled registry.") from None
    return Registry(parse_registry(data, source), source)


def parse_registry(data: Any, source: Path | str = "<registry>") -> list[ModelEntry]:
    """Validate the decoded JSON of a registry and return its entries."""
    if not isinstance(data, Mapping):
        raise RegistryError(f"{source}: the registry must be a JSON object with a 'models' list.")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RegistryError(
            f"{source}: schema_version is {version!r}, this isegformer reads version "
            f"{SCHEMA_VERSION}. Use a registry written for this version, or upgrade isegformer."
        )
    models = data.get("models")
    if not isinstance(models, list):
        raise RegistryError(f"{source}: 'models' must be a list of model entries.")
    entries: list[ModelEntry] = []
    seen_names: set[str] = set()
    for index, raw in enumerate(models):
        entry = _parse_entry(raw, f"{source}: models[{index}]")
        if entry.name in seen_names:
            raise RegistryError(f"{source}: models[{index}]: the name {entry.name!r} appears twice; "
                                "names must be unique.")
        seen_names.add(entry.name)
        entries.append(entry)
    return entries


def _parse_entry(raw: Any, where: str) -> ModelEntry:
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}: each model entry must be a JSON object.")
    label = f"{where} ({raw.get('name')!r})" if isinstance(raw.get("name"), str) else where
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise RegistryError(f"{label}: missing required field(s) {', '.join(missing)}.")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise RegistryError(f"{label}: unknown field(s) {', '.join(unknown)}; allowed fields are "
                            f"{', '.join(sorted(_KNOWN_KEYS))}.")
    for key in (*_REQUIRED, *_OPTIONAL_TEXT):
        if key in raw and not isinstance(raw[key], str):
            raise RegistryError(f"{label}: {key!r} must be a string.")
    name, kind, filename = raw["name"], raw["kind"], raw["filename"]
    if not _NAME.fullmatch(name):
        raise RegistryError(f"{label}: name {name!r} must be 1 to 100 lower-case letters, digits, "
                            "'_', '.' or '-', starting with a letter or digit (it becomes a folder "
                            "name in the cache).")
    if kind not in KINDS:
        raise RegistryError(f"{label}: kind {kind!r} is not one of {', '.join(KINDS)}.")
    problem = filename_problem(filename)
    if problem:
        raise RegistryError(f"{label}: filename {filename!r} {problem}.")
    if not raw["version"] or not raw["version"].isprintable():
        raise RegistryError(f"{label}: 'version' must be a non-empty line of text.")
    mirrors = raw.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise RegistryError(f"{label}: 'mirrors' must be a list of URL strings.")
    for url in (raw["url"], *mirrors):
        problem = url_problem(url)
        if problem:
            raise RegistryError(f"{label}: URL {url!r} {problem}.")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                             or not 0 < size <= _MAX_SIZE):
        raise RegistryError(f"{label}: 'size' must be a positive integer (bytes) or null.")
    sha256 = raw.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256.lower()):
            raise RegistryError(f"{label}: 'sha256' must be 64 hexadecimal digits or null.")
        sha256 = sha256.lower()
    return ModelEntry(
        name=name, kind=kind, version=raw["version"], filename=filename, url=raw["url"],
        mirrors=tuple(mirrors), size=size, sha256=sha256,
        **{key: raw.get(key, "") for key in _OPTIONAL_TEXT},
    )


def filename_problem(filename: str) -> Optional[str]:
    """Why ``filename`` cannot be a file in the cache folder, or None when it can.

    It must stay inside its model's folder on every platform: no separators, no ``..``, no NUL
    or other control characters, none of the characters or device names Windows reserves, and
    not one of the names the cache uses for itself (``.part``, ``.lock``, hidden temporaries).
    """
    if not filename:
        return "is empty"
    if any(char in _FORBIDDEN_IN_FILENAMES or not char.isprintable() for char in filename):
        return ("must be a plain file name: no folder separators, control characters (such as "
                "NUL or a newline) or any of < > : \" | ? *")
    if filename in (".", "..") or filename.startswith("."):
        return "must not start with '.' (hidden files and '..' are not model files)"
    if filename.endswith((" ", ".")):
        return "must not end with a space or a dot (Windows drops them)"
    if _WINDOWS_RESERVED.fullmatch(filename):
        return "is a device name on Windows"
    if filename.endswith((".part", ".lock", ".tmp")):
        return "must not end in .part, .lock or .tmp (the cache's own working files)"
    if len(filename.encode("utf-8")) > _MAX_FILENAME_BYTES:
        return f"is longer than {_MAX_FILENAME_BYTES} bytes"
    return None


def url_problem(url: str) -> Optional[str]:
    """Why ``url`` cannot be downloaded from, or None when it is a well-formed http(s) URL."""
    if not url.isprintable() or any(char.isspace() for char in url):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port raises for a malformed one)
    except ValueError as err:
        return f"is malformed ({err})"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "names no host"
    return None
