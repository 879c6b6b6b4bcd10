"""Issue 12 item 12: a process killed while writing leaves its temporary file behind; the next
write into the same folder removes every abandoned one, and nothing else."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from isegformer import atomic
from isegformer.atomic import STALE_AFTER_SECONDS, atomic_replace, remove_stale_temporaries

LOGIC = os.path.join(os.path.dirname(__file__), "..", "..", "Logic")


def _killed_mid_write(folder, target_name: str, keep_extension: bool) -> list[str]:
    """Run a real process that starts an atomic write into ``folder`` and is SIGKILLed in the
    middle of it; return the hidden files it left."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.abspath(LOGIC)!r})
        from isegformer.atomic import atomic_replace
        with atomic_replace({str(folder / target_name)!r}, keep_extension={keep_extension}) as tmp:
            tmp.write_bytes(b"half of a file")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and PID checks are POSIX")
@pytest.mark.parametrize("target_name, keep_extension", [
    ("brain.isegsession", True), ("model.pth", False), ("training_state.pt", False)])
def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, target_name, keep_extension):
    (tmp_path / target_name).write_bytes(b"previous version")
    left = _killed_mid_write(tmp_path, target_name, keep_extension)
    assert len(left) == 1 and target_name in left[0]  # the kill left exactly its temporary file
    assert (tmp_path / target_name).read_bytes() == b"previous version"

    with atomic_replace(tmp_path / "other.json") as tmp:  # any later write into the folder
        tmp.write_bytes(b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target_name, "other.json"])
    assert (tmp_path / target_name).read_bytes() == b"previous version"


def _touch(path, age_seconds: float = 0.0):
    path.write_bytes(b"x")
    if age_seconds:
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
    return path


def test_a_living_writers_temporary_is_kept_until_it_is_old(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = atomic._owner_host()
        living = _touch(tmp_path / f".isegformer-tmp.{host}.{sleeper.pid}.0123abcd.scan.nii.gz")
        mine = _touch(tmp_path / atomic.temporary_name("mine.json", keep_extension=False))
        old = _touch(tmp_path / f".isegformer-tmp.{host}.{sleeper.pid}.89abcdef.old.nrrd",
                     STALE_AFTER_SECONDS + 60)
        assert remove_stale_temporaries(tmp_path) == [old]
        assert living.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once its owner is gone, the same file goes at the next write.
    with atomic_replace(tmp_path / "x.json") as tmp:
        tmp.write_bytes(b"{}")
    assert not living.exists() and mine.exists()


def test_another_machines_temporary_is_judged_by_age_alone(tmp_path):
    # A PID from another host (a shared network folder) says nothing about processes here.
    young = _touch(tmp_path / ".isegformer-tmp.otherhost-1a.1.0123abcd.cache.json.tmp")
    old = _touch(tmp_path / ".isegformer-tmp.otherhost-1a.1.0123abce.cache.json.tmp", STALE_AFTER_SECONDS + 60)
    assert remove_stale_temporaries(tmp_path) == [old]
    assert young.exists()


def test_leftovers_of_the_earlier_naming_go_by_age_and_user_files_stay(tmp_path):
    stale_session = _touch(tmp_path / ".tmp-ab3_9xyz-x.isegsession", STALE_AFTER_SECONDS + 60)
    stale_model = _touch(tmp_path / ".model.pth.k2j4h5g6.tmp", STALE_AFTER_SECONDS + 60)
    young_state = _touch(tmp_path / ".training_state.pt.a1b2c3d4.tmp")
    users = [
        _touch(tmp_path / ".notes.abcdefgh.tmp", STALE_AFTER_SECONDS + 60),  # not a kind we write
        _touch(tmp_path / ".tmp-abcdefgh-thesis.docx", STALE_AFTER_SECONDS + 60),
        _touch(tmp_path / ".isegformer-tmp.bad name.1.0123abcd.x", STALE_AFTER_SECONDS + 60),
        _touch(tmp_path / "visible.nii.gz", STALE_AFTER_SECONDS + 60),
    ]
    (tmp_path / ".isegformer-tmp.h.1.0123abcd.folder").mkdir()  # only files are removed
    os.utime(tmp_path / ".isegformer-tmp.h.1.0123abcd.folder", (0, 0))
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_session, stale_model])
    assert young_state.exists() and all(p.exists() for p in users)
    assert (tmp_path / ".isegformer-tmp.h.1.0123abcd.folder").is_dir()


def test_cleanup_never_fails_a_write(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "unlink", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    _touch(tmp_path / ".tmp-abcdefgh-x.isegsession", STALE_AFTER_SECONDS + 60)
    assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "missing") == []


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_session_save_killed_mid_write_is_cleaned_by_the_next_save(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.abspath(LOGIC)!r})
        import numpy as np
        from isegformer.session import Session, storage
        session = Session.open((np.zeros((4, 5, 6), np.float32) + np.arange(6), np.eye(4)))
        session.save({str(tmp_path / "x.isegsession")!r})          # the user's previous save
        real = storage._write_npz
        def killed_half_way(path, arrays):
            real(path, dict(list(arrays.items())[:1]))
            os.kill(os.getpid(), signal.SIGKILL)
        storage._write_npz = killed_half_way
        session.save({str(tmp_path / "x.isegsession")!r})
    """)
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name != "x.isegsession"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".isegformer-tmp.")

    from isegformer.session import Session

    previous = Session.load(tmp_path / "x.isegsession")  # the last complete save is intact
    previous.save(tmp_path / "x.isegsession")
    assert [p.name for p in tmp_path.iterdir()] == ["x.isegsession"]


def test_the_longest_owner_tag_is_still_recognised(tmp_path):
    # 24 characters of host name, a dash and a 64-bit PID-namespace inode in hex.
    longest = f"{'h' * 24}-{'f' * 16}"
    old = _touch(tmp_path / f".isegformer-tmp.{longest}.4194304.0123abcd.model.pth.tmp", STALE_AFTER_SECONDS + 60)
    assert remove_stale_temporaries(tmp_path) == [old]
