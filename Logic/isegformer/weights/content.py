"""Whether a downloaded (or hand-placed) file looks like what its name says, before it is trusted.

Where the registry has no SHA256 (the official files, today), the cache trusts a file's first
complete download and records its hash. "Complete" must then mean more than "the connection
ended": a server that sends no Content-Length and closes early, or a sign-in page served as
``application/octet-stream``, would otherwise be recorded as the trusted file, and every later
use would refuse it while ``isegformer download`` found nothing to do. So the container is
checked first, cheaply (its first bytes and its end, never the whole payload): a checkpoint is
a complete zip or a pickle, a ``.zip`` is a complete zip, a gzip file ends with its trailer; and
nothing is a web page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import FileFormatError

#: Suffixes of files the checkpoint reader reads (torch.save's zip, or a legacy pickle).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl", ".tar")


def content_problem(path: Path, filename: str) -> Optional[str]:
    """Why the file at ``path`` cannot be the registry's ``filename`` (a phrase to follow
    "but"), or None when its container is whole."""
    from ..checkpoint import container_problem, is_complete_zip, starts_like_web_page

    with open(path, "rb") as file:
        head = file.read(64)
    if starts_like_web_page(head) or head.lstrip().lower().startswith((b"<?xml", b"{\"error")):
        return "it is a web page or an error message, not the file"
    name = filename.lower()
    if name.endswith(CHECKPOINT_SUFFIXES):
        return container_problem(path)
    if name.endswith(".zip"):
        return None if is_complete_zip(path) else "its zip archive is incomplete (an interrupted download looks like this)"
    if name.endswith(".gz") or name.endswith((".nii", ".nrrd", ".nhdr", ".mha")):
        from ..volume.truncation import check_not_truncated

        try:
            check_not_truncated(path)
        except FileFormatError as err:
            return f"it is truncated ({err})"
    return None
