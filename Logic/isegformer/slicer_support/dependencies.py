"""Which Python packages the Slicer module needs, and which of them are missing or unsupported.

Versions get a floor and a cap below the next major version, never an exact pin, so that the
module shares Slicer's Python with other extensions. torch is listed separately: in Slicer it is
installed by the PyTorch extension (which picks the CUDA build that matches the driver), the rest
with Slicer's pip.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import InvalidInputError


@dataclass(frozen=True)
class Requirement:
    """``name>=floor,<cap``; ``module`` is the import name when it differs from the distribution."""

    name: str
    floor: str
    cap: str
    module: str = ""

    @property
    def specifier(self) -> str:
        return f"{self.name}>={self.floor},<{self.cap}"


#: installed by the PyTorch extension (PyTorchUtils), never by pip directly
TORCH = Requirement("torch", "2.1", "3")

_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9.]*)\s*,\s*<\s*([0-9][0-9.]*)\s*$")


def read_requirements(path) -> tuple[Requirement, ...]:
    """The ``name>=floor,<cap`` lines of a requirements file (comments and blank lines skipped).

    Any other form raises InvalidInputError naming the line: the module's list must keep the
    floor-and-cap form that :func:`satisfies` checks.
    """
    requirements = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        match = _LINE.match(content)
        if match is None:
            raise InvalidInputError(
                f"{path}, line {number}: {content!r} is not of the form name>=floor,<cap."
            )
        requirements.append(Requirement(*match.groups()))
    return tuple(requirements)


#: what the module's code path imports besides torch (the session, the interpolation baseline,
#: the weights download). Slicer ships numpy, SimpleITK and requests, so usually only what is
#: missing here is installed. The same list as Resources/requirements.txt (a test checks it).
PIP_REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("scipy", "1.10", "2"),
    Requirement("SimpleITK", "2.2", "3"),
    Requirement("requests", "2.28", "3"),
    Requirement("threadpoolctl", "3.1", "4"),
)


def accepted_arguments(function: Callable, wanted: dict) -> dict:
    """The part of ``wanted`` (keyword arguments) that ``function``'s signature accepts.

    PyTorchUtils' ``installTorch`` gained ``torchVersionRequirement`` in 2023; an older
    extension would refuse the call with a TypeError. A function taking ``**kwargs`` gets all.
    """
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing extra
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(wanted)
    return {name: value for name, value in wanted.items() if name in parameters}


def _version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric components of a version ("2.3.1+cu121" -> (2, 3, 1))."""
    parts = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def satisfies(version: str, requirement: Requirement) -> bool:
    """Whether ``version`` is within ``[floor, cap)`` (pre-release tags are ignored)."""
    value = _version_tuple(version)
    return bool(value) and _version_tuple(requirement.floor) <= value < _version_tuple(requirement.cap)


def installed_version(name: str, lookup: Callable[[str], str] = metadata.version) -> Optional[str]:
    try:
        return lookup(name)
    except metadata.PackageNotFoundError:
        return None


def unmet(
    requirements: Iterable[Requirement], lookup: Callable[[str], str] = metadata.version
) -> list[tuple[Requirement, Optional[str]]]:
    """The requirements that are missing (version None) or installed outside their range."""
    problems = []
    for requirement in requirements:
        version = installed_version(requirement.name, lookup)
        if version is None or not satisfies(version, requirement):
            problems.append((requirement, version))
    return problems


def describe(problems: Iterable[tuple[Requirement, Optional[str]]]) -> str:
    """One line per problem, for the confirmation dialog."""
    lines = []
    for requirement, version in problems:
        state = "not installed" if version is None else f"version {version} installed"
        lines.append(f"- {requirement.specifier} ({state})")
    return "\n".join(lines)
