"""`isegformer models` and `isegformer download` against a local HTTP server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

import isegformer
from isegformer.checkpoint import load_checkpoint
from isegformer.cli.main import main
from weights_http_server import Route
from weights_testkit import (  # noqa: F401 (fixtures)
    checkpoint_bytes,
    isolated,
    model_entry,
    server,
    write_registry,
)


def test_download_prints_a_progress_bar_and_the_file_loads(isolated, server, tmp_path,
                                                           checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, throttle=0.002))
    registry = write_registry(tmp_path, [model_entry("m", server.url("/m.pth"))])
    env = dict(os.environ, PYTHONPATH=str(Path(isegformer.__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "isegformer.cli.main", "download", "m", "--registry",
         str(registry)], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    target = isolated / "models" / "m" / "m.pth"
    assert done.stdout.strip() == f"m: {target}"
    size = tqdm.format_sizeof(len(checkpoint_bytes))
    assert "100%|" in done.stderr and f"{size}/{size}" in done.stderr
    assert done.stderr.count("%|") > 3  # the bar was redrawn as bytes arrived

    loaded = load_checkpoint(target)  # the verified file goes to the safe checkpoint reader
    assert loaded["state_dict"] and loaded["layout"] in ("official", "model", "state_dict")


def test_models_lists_cached_and_verified(isolated, server, tmp_path, checkpoint_bytes, capsys):
    server.add("/a.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [
        model_entry("a", server.url("/a.pth")),
        model_entry("b", server.url("/b.pth"), kind="propagation", size=218_000_000),
    ])
    assert main(["models", "--registry", str(registry)]) == 0
    before = capsys.readouterr().out.splitlines()
    assert before[1].split()[:4] == ["a", "click_model", "?", "no"]
    assert before[2].split()[:5] == ["b", "propagation", "218.0", "MB", "no"]

    assert main(["download", "a", "--registry", str(registry), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["models", "--registry", str(registry)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert row.split()[0] == "a" and "yes" in row.split() and "yes (first use)" in row


def test_download_failure_exits_nonzero_and_says_what_to_do(isolated, server, tmp_path,
                                                            checkpoint_bytes, capsys):
    server.add("/ok.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [
        model_entry("ok", server.url("/ok.pth")),
        model_entry("gone", server.url("/gone.pth")),
    ])
    assert main(["download", "all", "--registry", str(registry), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"ok: {isolated / 'models' / 'ok' / 'ok.pth'}" in captured.out
    assert "gone" in captured.err and "404" in captured.err
    assert str(isolated / "models" / "gone" / "gone.pth") in captured.err
    assert "1 of 2 failed" in captured.err


def test_unknown_model_name_fails_before_any_download(isolated, server, tmp_path, capsys):
    registry = write_registry(tmp_path, [model_entry("m", server.url("/m.pth"))])
    assert main(["download", "m", "nosuch", "--registry", str(registry)]) == 1
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert server.seen == []
