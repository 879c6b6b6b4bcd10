"""Fetching one URL into a file, surviving the faults of real networks.

:func:`download_file` streams a URL into a ``.part`` file that the caller places in the cache
folder (so the final rename is atomic). It resumes with an HTTP ``Range`` request after a
dropped connection, retries timeouts, connection errors, 429 and 5xx with exponential backoff,
follows Google Drive's "can't scan this file for viruses" confirmation page, and reports
progress through the package's callback convention. Proxies come from the usual environment
variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``): requests honours them because the
session keeps ``trust_env``.

A resumed request carries ``If-Range`` with the first response's strong ETag (else its
Last-Modified date), and a partial answer whose validator differs starts the file over: a file
replaced on the server between two attempts is never spliced from two versions. A server that
sends neither validator is not resumed (the download starts over), for the same reason.

Transport security: a download that starts on ``https`` stays on ``https``. Every redirect,
confirmation page and retry is checked before it is requested, and the URL of every response is
checked again before its body is read: one hop over plain ``http`` ends the download with the
reason ``insecure_redirect`` before a byte is written (the registry's SHA256s are mostly absent,
so TLS is what vouches for a first download). A download that starts on ``http`` (a local
mirror, a test server) may go anywhere.

Slow servers: ``read_timeout`` bounds the silence between two blocks; ``min_rate`` (bytes/s over
windows of ``read_timeout`` seconds) ends an attempt that trickles, and a second such attempt in
a row gives up; ``deadline`` bounds one URL's whole download, retries and waits included.

On success the ``.part`` file holds the complete body, and its SHA256, size and final URL are
returned (:class:`DownloadResult`); an empty body is refused. On any failure or cancellation the
``.part`` file is removed before the error propagates: a later run starts again from zero rather
than trusting bytes of unknown origin.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import html
import http.client
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests
import urllib3.exceptions

from .. import __version__
from ..errors import CancelledError, DownloadError
from ..progress import ProgressCallback, report

log = logging.getLogger(__name__)

_USER_AGENT = f"isegformer/{__version__} (+https://github.com/uncbiag/iSegFormer)"
_MAX_CONFIRM_PAGES = 3
_MAX_PAGE_BYTES = 2 << 20


@dataclass(frozen=True)
class DownloadOptions:
    """Network settings of a download. The defaults suit a 355 MB file on a slow link."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # longest silence tolerated between two received blocks
    retries: int = 5  # further attempts after a failure that made no progress
    backoff: float = 1.0  # first wait between attempts; doubles each time
    backoff_max: float = 30.0
    max_attempts: int = 50  # hard cap per URL, even when every attempt makes some progress
    chunk_size: int = 1 << 18
    min_rate: float = 1024.0  # bytes/s over each read_timeout window; 0 turns the check off
    deadline: Optional[float] = None  # seconds for one URL, retries and waits included


class DiskFullError(DownloadError):
    """The disk holding the cache filled up during a download."""


class DownloadFailure(DownloadError):
    """A download from one URL failed; ``reason`` says how.

    ``reason`` is one of ``offline``, ``timeout``, ``not_found``, ``http_error``,
    ``server_error``, ``interrupted``, ``bad_content``, ``wrong_size`` (not the registry's size),
    ``tls``, ``insecure_redirect`` (an https download sent on to plain http) or ``write_error``.
    """

    def __init__(self, message: str, *, reason: str, url: str, status: Optional[int] = None):
        super().__init__(message)
        self.reason = reason
        self.url = url
        self.status = status


class DownloadResult(tuple):
    """``(sha256, size)`` of the complete body, which it unpacks as, plus ``final_url``: the
    address the last bytes came from, after redirects and confirmation pages."""

    final_url: str

    def __new__(cls, sha256: str, size: int, final_url: str) -> "DownloadResult":
        result = super().__new__(cls, (sha256, size))
        result.final_url = final_url
        return result

    @property
    def sha256(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]


class _Retryable(Exception):
    def __init__(self, failure: DownloadFailure):
        super().__init__(str(failure))
        self.failure = failure
        self.too_slow = False


class _Restart(Exception):
    """The bytes on disk cannot be continued (server ignored or botched the Range): start over."""


class _FollowPage(Exception):
    """The server sent a confirmation page; fetch this URL instead."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def new_session() -> requests.Session:
    """A session that honours the proxy environment variables (``trust_env`` stays True)."""
    session = requests.Session()
    session.headers["User-Agent"] = _USER_AGENT
    # A compressed transfer would make byte offsets (Range) and Content-Length disagree with
    # the file we write, so ask for the bytes as they are.
    session.headers["Accept-Encoding"] = "identity"
    return session


def download_file(
    url: str,
    part_path: Path,
    *,
    label: str = "",
    expected_size: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    options: DownloadOptions = DownloadOptions(),
    session: Optional[requests.Session] = None,
) -> DownloadResult:
    """Download ``url`` into ``part_path``; return ``(sha256, size)`` of the complete body
    (a :class:`DownloadResult`, whose ``final_url`` says where the bytes came from).

    Raises :class:`DownloadFailure`, :class:`DiskFullError` or
    :class:`~isegformer.errors.CancelledError`; ``part_path`` is removed in every failing case.
    """
    part_path = Path(part_path)
    label = label or part_path.name.removesuffix(".part")
    own_session = session is None
    session = session or new_session()
    try:
        return _Transfer(url, part_path, label, expected_size, progress, options, session).run()
    except BaseException:
        with contextlib.suppress(OSError):
            part_path.unlink()
        raise
    finally:
        if own_session:
            session.close()


class _Transfer:
    """The state of one download: file, bytes so far, running hash, current URL."""

    def __init__(self, url: str, part_path: Path, label: str, expected_size: Optional[int],
                 progress: Optional[ProgressCallback], options: DownloadOptions,
                 session: requests.Session):
        self.url = url
        self.original_url = url
        self.final_url = url
        # Once on https, every hop must stay there (see the module docstring).
        self.secure = urlsplit(url).scheme.lower() == "https"
        self.part_path = part_path
        self.label = label
        self.expected_size = expected_size
        self.progress = progress
        self.options = options
        self.session = session
        self.done = 0
        self.furthest = 0  # the most bytes any attempt had on disk
        self.total: Optional[int] = expected_size
        self.hasher = hashlib.sha256()
        self.pages_followed = 0
        self.validator: Optional[str] = None  # the file version the bytes on disk belong to
        self.deadline: Optional[float] = None

    def run(self) -> DownloadResult:
        self.deadline = (None if self.options.deadline is None
                         else time.monotonic() + self.options.deadline)
        try:
            self.part_path.parent.mkdir(parents=True, exist_ok=True)
            stream = open(self.part_path, "wb")
        except OSError as err:
            raise self._write_error(err) from err
        with stream:
            failures = 0
            slow_in_a_row = 0
            for attempt in range(1, self.options.max_attempts + 1):
                furthest = self.furthest
                self._check_deadline()
                try:
                    self._attempt(stream)
                    break
                except _FollowPage as page:
                    self.url = page.url
                    self._truncate(stream)
                    continue
                except _Restart:
                    self._truncate(stream)
                    continue
                except _Retryable as err:
                    slow_in_a_row = slow_in_a_row + 1 if err.too_slow else 0
                    # Only an attempt that got clearly further than any before earns a fresh set
                    # of retries; a server that always breaks at the same byte, or trickles a few
                    # bytes each time, runs out of them.
                    failures = (0 if self.furthest >= furthest + self._real_progress()
                                else failures + 1)
                    if (failures > self.options.retries or attempt == self.options.max_attempts
                            or slow_in_a_row > 1):
                        raise self._give_up(err.failure, attempt) from None
                    if self.done and self.validator is None:
                        log.info("%s: the server names no version of the file (no ETag or "
                                 "Last-Modified), so it is not resumed; starting over", self.label)
                        self._truncate(stream)
                    delay = min(self.options.backoff * 2 ** max(failures - 1, 0),
                                self.options.backoff_max)
                    log.info("%s: %s; attempt %d failed, retrying in %.1f s", self.label,
                             err.failure, attempt, delay)
                    self._sleep(delay, f"{err.failure.reason}; retrying in {delay:.0f} s")
            else:
                raise self._failure("interrupted", f"{_host(self.url)} never delivered the whole "
                                    f"file in {self.options.max_attempts} attempts")
            try:
                stream.flush()
            except OSError as err:
                raise self._write_error(err) from err
        if self.done == 0:
            raise self._failure("bad_content", f"{_host(self.url)} sent an empty file (0 bytes) "
                                "instead of the model")
        return DownloadResult(self.hasher.hexdigest(), self.done, self.final_url)

    def _real_progress(self) -> int:
        """Bytes an attempt must add to count as progress: one window at the minimum rate."""
        return max(1, int(self.options.min_rate * self._rate_window()))

    def _rate_window(self) -> float:
        return max(self.options.read_timeout, 0.1)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise self._failure("timeout", f"the download from {_host(self.url)} did not finish "
                                f"within its {self.options.deadline:g} s deadline ({self.done} "
                                "bytes received)")

    def _timeouts(self) -> tuple[float, float]:
        connect, read = self.options.connect_timeout, self.options.read_timeout
        if self.deadline is not None:
            left = max(self.deadline - time.monotonic(), 0.05)
            connect, read = min(connect, left), min(read, left)
        return connect, read

    # -- one HTTP request ---------------------------------------------------------------------

    def _attempt(self, stream: BinaryIO) -> None:
        headers = {}
        if self.done and self.validator is not None:  # run() never resumes without one
            headers = {"Range": f"bytes={self.done}-", "If-Range": self.validator}
        try:
            self._require_secure(self.url, self.url)
            with self.session.get(self.url, headers=headers, stream=True,
                                  timeout=self._timeouts(), allow_redirects=True,
                                  hooks={"response": [self._check_hop]}) as response:
                self._require_secure(str(response.url), self.url, response)
                self.final_url = str(response.url)
                self._check_status(response)
                if _is_web_page(response):
                    raise _FollowPage(self._confirmation_url(response))
                self._position(response, stream)
                self._check_space()
                self._receive(response, stream)
        except (_Retryable, _Restart, _FollowPage, CancelledError, DownloadError):
            raise
        except requests.exceptions.ConnectTimeout as err:
            raise self._retryable("timeout", f"connecting to {_host(self.url)} timed out") from err
        except requests.exceptions.ReadTimeout as err:
            raise self._retryable("timeout", f"{_host(self.url)} sent nothing for "
                                  f"{self.options.read_timeout:g} s") from err
        except requests.exceptions.SSLError as err:
            raise self._failure("tls", f"the secure connection to {_host(self.url)} failed "
                                f"({err}); a proxy that inspects HTTPS needs its certificate in "
                                "REQUESTS_CA_BUNDLE") from err
        except requests.exceptions.ProxyError as err:
            raise self._retryable("offline", f"cannot connect through the proxy to "
                                  f"{_host(self.url)} (check HTTPS_PROXY / HTTP_PROXY)") from err
        except (requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ConnectionError) as err:
            if _is_read_timeout(err):
                raise self._retryable("timeout", f"{_host(self.url)} sent nothing for "
                                      f"{self.options.read_timeout:g} s") from err
            if self.done or self.pages_followed or isinstance(
                    err, requests.exceptions.ChunkedEncodingError):
                raise self._retryable("interrupted", f"the connection to {_host(self.url)} "
                                      f"broke after {self.done} bytes") from err
            raise self._retryable("offline", f"cannot connect to {_host(self.url)}") from err
        except requests.exceptions.TooManyRedirects as err:
            raise self._failure("http_error", f"{_host(self.url)} redirects in a loop "
                                f"({err})") from err
        except requests.exceptions.RequestException as err:
            raise self._failure("http_error", f"the request to {self.url} failed: {err}") from err
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
            # Raised by urllib3 or http.client below requests' own wrapping: the connection or
            # the server's framing broke. Worth another attempt.
            raise self._retryable("interrupted", f"the connection to {_host(self.url)} broke "
                                  f"after {self.done} bytes ({type(err).__name__}: {err})") from err
        except Exception as err:  # noqa: BLE001 - e.g. ValueError for `Location: http://[::1`
            raise self._failure("http_error", f"{_host(self.url)} gave an answer that cannot be "
                                f"followed ({type(err).__name__}: {err})") from err
        if self.total is not None and self.done < self.total:
            raise self._retryable("interrupted", f"the connection to {_host(self.url)} closed "
                                  f"after {self.done} of {self.total} bytes")
        if self.total is not None and self.done > self.total:
            raise self._failure("bad_content", f"{_host(self.url)} sent {self.done} bytes, more "
                                f"than the announced {self.total}")

    def _check_hop(self, response: requests.Response, *args, **kwargs) -> requests.Response:
        """requests' response hook, called for every response of a redirect chain before the
        next hop is requested: the answer's own URL, and where it redirects, must be secure."""
        self._require_secure(str(response.url), self.url, response)
        target = self.session.get_redirect_target(response)
        if target:
            # Resolved as requests resolves it ("//host/x" and relative paths keep the scheme).
            self._require_secure(urljoin(str(response.url), target), str(response.url), response)
        return response

    def _require_secure(self, url: str, came_from: str,
                        response: Optional[requests.Response] = None) -> None:
        """Refuse ``url`` when this download started on https and ``url`` is not https."""
        if not self.secure or urlsplit(url).scheme.lower() == "https":
            return
        if response is not None:
            response.close()
        raise self._failure(
            "insecure_redirect",
            f"{_host(came_from)} sent the https download on to {url}, which is not https: bytes "
            "sent that way could have been altered by anyone on the network, so it was refused "
            "before anything was downloaded from it")

    def _receive(self, response: requests.Response, stream: BinaryIO) -> None:
        """Write the body as it arrives."""
        for chunk in self._timed_chunks(response, self.options.chunk_size):
            self._write(stream, chunk)

    def _timed_chunks(self, response: requests.Response, size: int):
        """The body's blocks as they arrive, ending an attempt that trickles or passes the
        deadline (a web page is read the same way as the file)."""
        window = self._rate_window()
        window_start, window_bytes = time.monotonic(), 0
        for chunk in _arriving_chunks(response, size):
            yield chunk
            window_bytes += len(chunk)
            now = time.monotonic()
            self._check_deadline()
            if now - window_start >= window:
                if self.options.min_rate > 0 and window_bytes < self.options.min_rate * window:
                    retry = self._retryable(
                        "timeout", f"{_host(self.url)} sent only {window_bytes} bytes in "
                        f"{now - window_start:.1f} s, slower than the minimum of "
                        f"{self.options.min_rate:g} bytes/s")
                    retry.too_slow = True
                    raise retry
                window_start, window_bytes = now, 0

    def _check_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status == 416 and self.done:
            raise _Restart()  # our offset is past the server's idea of the file: start over
        if status in (404, 410):
            raise self._failure("not_found", f"{response.url} does not exist (HTTP {status})",
                                status=status)
        if status == 429 or status >= 500:
            raise self._retryable("server_error", f"{_host(self.url)} answered HTTP {status} "
                                  f"{response.reason or ''}".rstrip(), status=status)
        raise self._failure("http_error", f"{response.url} answered HTTP {status} "
                            f"{response.reason or ''}".rstrip(), status=status)

    def _position(self, response: requests.Response, stream: BinaryIO) -> None:
        """Where this response's body starts in the file, and the file's total size."""
        length = _int_header(response, "Content-Length")
        if length is None and "Content-Length" in response.headers:
            raise self._failure("bad_content", f"{_host(self.url)} announces the length "
                                f"{response.headers['Content-Length'][:40]!r}, which is not a "
                                "number of bytes")
        if response.status_code == 206:
            start, total = _content_range(response.headers.get("Content-Range", ""))
            if start != self.done:
                log.info("%s: asked for byte %d, got a range from %s; starting over",
                         self.label, self.done, start)
                raise _Restart()
            if not self.done:
                self.validator = _validator(response)
            elif _validator(response) != self.validator:
                # The server ignored If-Range: the bytes on disk are of another version.
                log.info("%s: the file changed on the server since the first attempt; starting "
                         "over", self.label)
                raise _Restart()
            self.total = total if total is not None else (
                self.done + length if length is not None else self.total)
        else:
            if self.done:
                log.info("%s: the server sent the whole file again (it changed, or it does not "
                         "resume downloads); starting over", self.label)
                self._truncate(stream)
            self.validator = _validator(response)
            if length is not None:
                self.total = length
        if (self.expected_size is not None and self.total is not None
                and self.total != self.expected_size):
            raise self._failure("wrong_size", f"{_host(self.url)} announces a file of "
                                f"{self.total} bytes, the registry expects {self.expected_size}")

    def _confirmation_url(self, response: requests.Response) -> str:
        """The URL behind a Google Drive style "download anyway" page, or a clear failure."""
        page = bytearray()
        for chunk in self._timed_chunks(response, 1 << 16):
            page += chunk
            if len(page) >= _MAX_PAGE_BYTES:
                break
        page = bytes(page[:_MAX_PAGE_BYTES])
        text = page.decode(response.encoding or "utf-8", errors="replace")
        target = _find_confirmation(str(response.url), text, response.cookies)
        if target is None or self.pages_followed >= _MAX_CONFIRM_PAGES:
            raise self._failure(
                "bad_content",
                f"{_host(self.url)} sent a web page instead of the file (a sign-in page, a "
                "'quota exceeded' notice, or a file that is not shared publicly)",
            )
        self._require_secure(target, str(response.url), response)
        self.pages_followed += 1
        log.info("%s: following the download confirmation page to %s", self.label, target)
        return target

    # -- writing, waiting, giving up -----------------------------------------------------------

    def _write(self, stream: BinaryIO, chunk: bytes) -> None:
        try:
            write_chunk(stream, chunk)
        except OSError as err:
            raise self._write_error(err) from err
        self.hasher.update(chunk)
        self.done += len(chunk)
        self.furthest = max(self.furthest, self.done)
        report(self.progress, self.done, self.total or 0, f"downloading {self.label}")

    def _truncate(self, stream: BinaryIO) -> None:
        try:
            stream.seek(0)
            stream.truncate()
        except OSError as err:
            raise self._write_error(err) from err
        self.done = 0
        self.validator = None
        self.total = self.expected_size
        self.hasher = hashlib.sha256()

    def _check_space(self) -> None:
        if self.total is None:
            return
        needed = self.total - self.done
        try:
            free = shutil.disk_usage(self.part_path.parent).free
        except OSError:
            return
        if free < needed:
            raise DiskFullError(
                f"not enough disk space for {self.label}: it needs {_mib(needed)} more and "
                f"{self.part_path.parent} has {_mib(free)} free. Free some space, or set "
                "ISEGFORMER_HOME to a folder on a larger disk."
            )

    def _write_error(self, err: OSError) -> DownloadError:
        if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return DiskFullError(
                f"the disk filled up while downloading {self.label} into "
                f"{self.part_path.parent} ({self.done} bytes written; the partial file was "
                "removed). Free some space, or set ISEGFORMER_HOME to a folder on a larger disk."
            )
        return self._failure("write_error", f"cannot write {self.part_path}: "
                             f"{err.strerror or err}. Check the folder's permissions, or set "
                             "ISEGFORMER_HOME to a writable folder.")

    def _sleep(self, seconds: float, message: str) -> None:
        deadline = time.monotonic() + seconds
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        while True:
            report(self.progress, self.done, self.total or 0, f"{self.label}: {message}")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.25))

    def _failure(self, reason: str, message: str, status: Optional[int] = None) -> DownloadFailure:
        return DownloadFailure(message, reason=reason, url=self.original_url, status=status)

    def _retryable(self, reason: str, message: str, status: Optional[int] = None) -> _Retryable:
        return _Retryable(self._failure(reason, message, status))

    def _give_up(self, failure: DownloadFailure, attempts: int) -> DownloadFailure:
        return DownloadFailure(f"{failure} (gave up after {attempts} attempts)",
                               reason=failure.reason, url=failure.url, status=failure.status)


def write_chunk(stream: BinaryIO, chunk: bytes) -> None:
    """Write one received block (a seam for tests that simulate a full disk)."""
    stream.write(chunk)


# -- helpers ------------------------------------------------------------------------------------

_FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.IGNORECASE | re.DOTALL)
_INPUT = re.compile(r"<input\b([^>]*)>", re.IGNORECASE)
_ATTR = re.compile(r"""([a-zA-Z_:-]+)\s*=\s*("([^"]*)"|'([^']*)')""")
_CONFIRM_LINK = re.compile(r"""href\s*=\s*["']([^"']*confirm=[^"']*)["']""", re.IGNORECASE)
_CONFIRM_TOKEN = re.compile(r"confirm=([0-9A-Za-z_-]+)")


def _find_confirmation(page_url: str, text: str, cookies) -> Optional[str]:
    """Where a Drive-style interstitial page says the real file is.

    Drive has used three forms over the years: a ``download_warning`` cookie whose value is
    the token, a link carrying ``confirm=<token>``, and (drive.usercontent.google.com) a form
    whose hidden inputs, ``confirm`` among them, make up the download query.
    """
    for form_attrs, body in _FORM.findall(text):
        attrs = _attributes(form_attrs)
        fields = {}
        for input_attrs in _INPUT.findall(body):
            field = _attributes(input_attrs)
            if field.get("name") and field.get("type", "").lower() in ("hidden", ""):
                fields[field["name"]] = field.get("value", "")
        action = attrs.get("action", "")
        if "confirm" in fields or "confirm=" in action:
            target = urljoin(page_url, action or page_url)
            return _with_query(target, fields)
    match = _CONFIRM_LINK.search(text)
    if match:
        return urljoin(page_url, html.unescape(match.group(1)))
    for name, value in (cookies.items() if cookies is not None else ()):
        if name.startswith("download_warning"):
            return _with_query(page_url, {"confirm": value})
    match = _CONFIRM_TOKEN.search(text)
    if match:
        return _with_query(page_url, {"confirm": match.group(1)})
    return None


def _attributes(text: str) -> dict[str, str]:
    return {m.group(1).lower(): html.unescape(m.group(3) if m.group(3) is not None else m.group(4))
            for m in _ATTR.finditer(text)}


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(extra)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _is_web_page(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/html")


def _is_read_timeout(err: Exception) -> bool:
    from urllib3.exceptions import ReadTimeoutError

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ReadTimeoutError):
            return True
        nested = [a for a in getattr(err, "args", ()) if isinstance(a, BaseException)]
        err = nested[0] if nested else (err.__cause__ or err.__context__)
    return False


def _arriving_chunks(response: requests.Response, size: int):
    """The body in blocks of at most ``size`` bytes, each as soon as it arrives.

    ``iter_content`` waits until a whole block is there, so a server sending a byte at a time
    would never let the caller look at the clock. The exceptions are wrapped as requests wraps
    them, so that one set of handlers serves both.
    """
    raw = response.raw
    while True:
        try:
            chunk = raw.read1(size, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as err:
            raise requests.exceptions.ConnectionError(err) from err
        except urllib3.exceptions.SSLError as err:
            raise requests.exceptions.SSLError(err) from err
        except urllib3.exceptions.DecodeError as err:
            raise requests.exceptions.ContentDecodingError(err) from err
        except urllib3.exceptions.ProtocolError as err:
            raise requests.exceptions.ChunkedEncodingError(err) from err
        if not chunk:
            return
        yield chunk


def _validator(response: requests.Response) -> Optional[str]:
    """What names this version of the file for ``If-Range``: a strong ETag, else Last-Modified."""
    etag = response.headers.get("ETag", "").strip()
    if etag and not etag.startswith("W/") and etag.isprintable():
        return etag
    modified = response.headers.get("Last-Modified", "").strip()
    return modified if modified and modified.isprintable() else None


def _content_range(value: str) -> tuple[Optional[int], Optional[int]]:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _int_header(response: requests.Response, name: str) -> Optional[int]:
    value = response.headers.get(name, "").strip()
    return int(value) if re.fullmatch(r"\d{1,19}", value) else None


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
