"""Review 5a, transport and plumbing: an https download never continues over plain http, a
model named like one of the cache's own files cannot deadlock its download, and a reader that
closes the pipe early ends ``isegformer`` quietly.

Real parts: a TLS server on 127.0.0.1 with a self-signed certificate made by the ``openssl``
binary for this run (trusted through ``REQUESTS_CA_BUNDLE`` or the session's ``verify``), the
fault-injecting plain HTTP server of weights_http_server.py, and ``isegformer`` run as a real
process writing into a real pipe.
"""
from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from isegformer.weights import DownloadFailure, ModelCache, download_model
from isegformer.weights.download import download_file, new_session
from weights_http_server import Route
from weights_testkit import (  # noqa: F401 (fixtures)
    FAST,
    cached_files,
    isolated,
    leftovers,
    model_entry,
    recorded,
    server,
    sha,
    write_registry,
)

LOGIC = Path(__file__).resolve().parents[2] / "Logic"


@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    """A small real checkpoint (torch.save), so that TLS transfers take milliseconds."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(1024, dtype=torch.float32).reshape(32, 32)}},
               buffer)
    return buffer.getvalue()


# -- a TLS server on 127.0.0.1 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl binary is needed to make a certificate for the TLS server")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


class _TLSServer:
    """Serves ``routes``: path -> (status, headers, body). Records the paths asked for."""

    def __init__(self, cert: Path, key: Path):
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                owner.seen.append(path)
                status, headers, body = owner.routes.get(path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def file(self, path: str, body: bytes) -> None:
        self.routes[path] = (200, {"Content-Type": "application/octet-stream"}, body)

    def redirect(self, path: str, location: str) -> None:
        self.routes[path] = (302, {"Location": location}, b"")

    def page(self, path: str, html: str) -> None:
        self.routes[path] = (200, {"Content-Type": "text/html; charset=utf-8"}, html.encode())

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tls(certificate, isolated, monkeypatch):
    cert, key = certificate
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # requests' trust_env reads it
    srv = _TLSServer(cert, key)
    yield srv
    srv.stop()


def _download(url: str, part: Path):
    with new_session() as session:
        return download_file(url, part, options=FAST, session=session)


# -- 1. https never continues over http ---------------------------------------------------------

def test_https_download_itself_works_with_the_test_certificate(tls, tmp_path, checkpoint_bytes):
    # The control for the refusals below: TLS to this server works, and so does a redirect
    # that stays on https (relative Location), whose target is the final URL.
    tls.file("/file.pth", checkpoint_bytes)
    tls.redirect("/moved", "/file.pth")
    result = _download(tls.url("/moved"), tmp_path / "x.pth.part")
    sha256, size = result
    assert (sha256, size) == (sha(checkpoint_bytes), len(checkpoint_bytes))
    assert result.final_url == tls.url("/file.pth")
    assert (tmp_path / "x.pth.part").read_bytes() == checkpoint_bytes


@pytest.mark.parametrize("hops", [1, 2])
def test_https_redirect_to_http_is_refused_before_any_request_over_http(
        tls, server, tmp_path, checkpoint_bytes, hops):
    server.add("/m.pth", Route(checkpoint_bytes))
    tls.redirect("/to_http", server.url("/m.pth"))
    tls.redirect("/hop", "/to_http")  # https -> https -> http: the downgrade at the second hop
    start = "/to_http" if hops == 1 else "/hop"
    part = tmp_path / "x.pth.part"
    with pytest.raises(DownloadFailure) as caught:
        _download(tls.url(start), part)
    assert caught.value.reason == "insecure_redirect"
    assert server.url("/m.pth") in str(caught.value) and "not https" in str(caught.value)
    assert caught.value.url == tls.url(start)
    assert server.requests_for("/m.pth") == []  # the plain-http address was never asked
    assert not part.exists()


@pytest.mark.parametrize("style", ["form", "link"])
def test_drive_confirmation_leading_to_http_is_refused(tls, server, tmp_path, checkpoint_bytes,
                                                       style):
    server.add("/m.pth", Route(checkpoint_bytes))
    target = server.url("/m.pth")
    if style == "form":
        html = (f'<html><body><form id="download-form" action="{target}" method="get">'
                '<input type="hidden" name="id" value="abc">'
                '<input type="hidden" name="confirm" value="t0k3n">'
                '<input type="submit" value="Download anyway"></form></body></html>')
    else:
        html = f'<html><body><a href="{target}?id=abc&amp;confirm=t0k3n">Download anyway</a>'
    tls.page("/uc", html)
    with pytest.raises(DownloadFailure) as caught:
        _download(tls.url("/uc"), tmp_path / "x.pth.part")
    assert caught.value.reason == "insecure_redirect"
    assert server.requests_for("/m.pth") == []
    assert not (tmp_path / "x.pth.part").exists()


def test_a_model_whose_https_url_downgrades_is_not_cached_or_recorded(tls, server, isolated,
                                                                     tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    tls.redirect("/to_http", server.url("/m.pth"))
    registry = write_registry(tmp_path, [model_entry("m", tls.url("/to_http"))])
    with pytest.raises(DownloadFailure) as caught:
        download_model("m", registry=registry, options=FAST)
    assert caught.value.reason == "insecure_redirect"
    assert cached_files(isolated) == [] and leftovers(isolated) == []
    assert recorded(isolated, "m") is None
    assert server.requests_for("/m.pth") == []


def test_a_refused_downgrade_falls_through_to_the_https_mirror(tls, server, isolated, tmp_path,
                                                               checkpoint_bytes):
    server.add("/m.pth", Route(b"plaintext copy that must not be used"))
    tls.redirect("/to_http", server.url("/m.pth"))
    tls.file("/mirror.pth", checkpoint_bytes)
    registry = write_registry(tmp_path, [model_entry("m", tls.url("/to_http"),
                                                     mirrors=[tls.url("/mirror.pth")])])
    path = download_model("m", registry=registry, options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)
    assert server.requests_for("/m.pth") == []


def test_plain_http_urls_and_their_redirects_keep_working(isolated, server, tmp_path,
                                                          checkpoint_bytes):
    # Local mirrors and test servers are plain http; only a download that started on https is
    # held to https.
    server.add("/m.pth", Route(checkpoint_bytes))
    server.add("/old.pth", Route(b"", mode="redirect", location=server.url("/m.pth")))
    result = _download(server.url("/old.pth"), tmp_path / "x.pth.part")
    assert tuple(result) == (sha(checkpoint_bytes), len(checkpoint_bytes))
    assert result.final_url == server.url("/m.pth")


# -- 2. model locks live apart from the cache's own lock -----------------------------------------

def _download_in_thread(timeout: float, **kwargs):
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["path"] = download_model(**kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True)  # a hang must not hold up pytest's exit
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"the download did not finish within {timeout} s (deadlock?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["path"]


@pytest.mark.parametrize("name", ["cache.json", "models", "cache.json.corrupt-1"])
def test_a_model_named_like_the_cache_files_downloads_without_hanging(isolated, server, tmp_path,
                                                                      checkpoint_bytes, name):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [model_entry(name, server.url("/m.pth"))])
    path = _download_in_thread(20, name=name, registry=registry, options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    record = recorded(isolated, name)
    assert record is not None and record.sha256 == sha(checkpoint_bytes)
    cache = ModelCache(isolated)
    assert cache.model_lock_path(name) != cache.record_lock_path


def test_stale_lock_files_of_the_old_layout_do_not_matter(isolated, server, tmp_path,
                                                          checkpoint_bytes):
    # Earlier versions kept model locks as locks/<name>.lock; such files (and anything else
    # left in locks/) are plain files that lock nothing.
    locks = isolated / "locks"
    locks.mkdir(parents=True)
    for stale in ("m.lock", "cache.json.lock", "models.lock"):
        (locks / stale).write_bytes(b"")
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [model_entry("m", server.url("/m.pth"))])
    assert _download_in_thread(20, name="m", registry=registry, options=FAST).read_bytes() == \
        checkpoint_bytes
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)


# -- 3. a reader that closes the pipe early ------------------------------------------------------

def _isegformer(args: list[str], home: Path, stdout) -> subprocess.Popen:
    env = dict(os.environ, ISEGFORMER_HOME=str(home), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(LOGIC),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("ISEGFORMER_REGISTRY", None)
    return subprocess.Popen([sys.executable, "-m", "isegformer.cli.main", *args], env=env,
                            stdout=stdout, stderr=subprocess.PIPE)


def _registry_of(tmp_path: Path, count: int) -> Path:
    entries = [model_entry(f"model{i:04d}", f"http://127.0.0.1:9/model{i:04d}.pth")
               for i in range(count)]
    return write_registry(tmp_path, entries)


def _assert_quiet_broken_pipe(child: subprocess.Popen) -> None:
    _, stderr = child.communicate(timeout=60)
    text = stderr.decode(errors="replace")
    assert child.returncode == 141, (child.returncode, text)
    for sign in ("error:", "Traceback", "Exception ignored", "BrokenPipe", "Broken pipe"):
        assert sign not in text, text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_models_into_a_pipe_nobody_reads_exits_quietly(tmp_path):
    # The reader is gone before anything is written (`isegformer models | true`): the output
    # buffered until exit meets the closed pipe.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        child = _isegformer(["models", "--no-verify", "--registry", str(_registry_of(tmp_path, 3))],
                            tmp_path / "home", write_end)
    finally:
        os.close(write_end)
    _assert_quiet_broken_pipe(child)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_models_piped_into_a_reader_that_stops_after_one_line_exits_quietly(tmp_path):
    # `isegformer models | head -1` with more output than a pipe holds: the command is still
    # writing when the reader closes its end.
    child = _isegformer(["models", "--no-verify", "--registry",
                         str(_registry_of(tmp_path, 3000))], tmp_path / "home", subprocess.PIPE)
    first = child.stdout.readline()
    child.stdout.close()
    assert first.split()[0] == b"NAME"
    _assert_quiet_broken_pipe(child)


def test_other_broken_pipes_keep_their_error_message(monkeypatch, capfd):
    # A BrokenPipeError that is not stdout's (a worker's pipe, a socket) is a real failure.
    # capfd: stdout is a real file here, healthy, so the broken pipe cannot be its own.
    from isegformer.cli import main as cli_main

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_main, "_run", lambda argv: broken(argv))
    assert cli_main.main([]) == 1
    assert "error: Broken pipe" in capfd.readouterr().err
