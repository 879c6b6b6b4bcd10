"""Review 3a, the command line's files: two-file inputs, truncated NIfTI, kept permissions,
non-UTF-8 names, output checks before the work, segment names, --device and huge coordinates.

Every test works on real files (SimpleITK writes the volumes, gzip cuts them) and runs the real
command line (``main``) or the package's readers; none of them needs the sample data.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.cli.main import main
from isegformer.errors import FileFormatError, InvalidInputError
from isegformer.output.paths import OutputIsInputError, guard_outputs
from isegformer.volume import read_volume, write_volume

import isegformer

# The folder holding the package under test, for the CLI runs in a process of their own.
PACKAGE_ROOT = Path(isegformer.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))


def _image(shape=(8, 32, 32), seed=0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 20, shape).astype(np.int16)
    array[:, 8:24, 8:24] += 200
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    return image


def _labels(image: sitk.Image) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[1, 10:22, 10:22] = 1
    array[6, 10:22, 10:22] = 1
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


@pytest.fixture
def case(tmp_path):
    image = _image()
    volume = tmp_path / "vol.nii.gz"
    labels = tmp_path / "lab.nii.gz"
    sitk.WriteImage(image, str(volume), useCompression=True)
    sitk.WriteImage(_labels(image), str(labels), useCompression=True)
    return volume, labels


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _propagate(volume, labels, out, *extra):
    return main(["propagate", str(volume), "--labels", str(labels), "--method", "interpolation",
                 "--device", "cpu", "--out", str(out), *extra])


# ------------------------------------------------------------------ 1. two-file inputs
@pytest.fixture
def detached(tmp_path):
    """vol.nhdr + vol.raw.gz and vol.mhd + vol.raw, written by SimpleITK, with labels beside."""
    folder = tmp_path / "det"
    folder.mkdir()
    image = _image()
    sitk.WriteImage(image, str(folder / "vol.nhdr"), useCompression=True)
    sitk.WriteImage(image, str(folder / "vol.mhd"), useCompression=False)
    sitk.WriteImage(_labels(image), str(folder / "lab.nhdr"), useCompression=True)
    assert (folder / "vol.raw.gz").is_file() and (folder / "vol.raw").is_file()
    assert (folder / "lab.raw.gz").is_file()
    return folder


def test_an_output_over_the_voxel_file_of_a_detached_nrrd_volume_is_refused(detached, tmp_path, capsys):
    before = _digest(detached / "vol.raw.gz")
    labels = tmp_path / "lab.nii.gz"
    sitk.WriteImage(_labels(_image()), str(labels))
    rc = _propagate(detached / "vol.nhdr", labels, detached / "vol.raw.gz")
    err = capsys.readouterr().err
    assert rc == 1
    assert "voxel file" in err and "vol.raw.gz" in err and "vol.nhdr" in err
    assert _digest(detached / "vol.raw.gz") == before
    sitk.ReadImage(str(detached / "vol.nhdr"))  # still whole


def test_an_output_over_the_voxel_file_of_a_metaimage_or_a_label_map_is_refused(detached, capsys):
    raw, labels_raw = _digest(detached / "vol.raw"), _digest(detached / "lab.raw.gz")
    # --overlay onto the .mhd's voxels
    rc = _propagate(detached / "vol.mhd", detached / "lab.nhdr", detached / "o.seg.nrrd",
                    "--overlay", str(detached / "vol.raw"))
    assert rc == 1 and "vol.raw" in capsys.readouterr().err
    # --out onto the --labels header's voxels
    rc = _propagate(detached / "vol.mhd", detached / "lab.nhdr", detached / "lab.raw.gz")
    err = capsys.readouterr().err
    assert rc == 1 and "--labels" in err and "lab.raw.gz" in err
    assert _digest(detached / "vol.raw") == raw and _digest(detached / "lab.raw.gz") == labels_raw
    assert not (detached / "o.seg.nrrd").exists()


def test_a_session_refuses_to_save_over_the_voxel_file_of_its_volume(detached):
    from isegformer.session import Session

    session = Session.open(detached / "vol.mhd")
    before = _digest(detached / "vol.raw")
    with pytest.raises(OutputIsInputError, match="voxel file"):
        session.save(detached / "vol.raw")
    with pytest.raises(OutputIsInputError, match="voxel file"):
        session.save_segmentation(detached / "vol.raw")
    assert _digest(detached / "vol.raw") == before


def test_the_data_files_of_every_header_form_are_protected(tmp_path):
    from isegformer.volume.data_files import data_files

    # NRRD: LIST, a numbered pattern, the old "datafile:" spelling and an absolute path.
    elsewhere = tmp_path / "elsewhere.raw"
    elsewhere.write_bytes(b"\0" * 16)
    for name in ("s1.raw", "s2.raw", "p001.raw", "p003.raw", "p005.raw", "old.raw"):
        (tmp_path / name).write_bytes(b"\0" * 16)
    common = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 2 2\nencoding: raw\n"
    (tmp_path / "list.nhdr").write_text(common + "data file: LIST 2\ns1.raw\ns2.raw\n")
    (tmp_path / "pattern.nhdr").write_text(common + "data file: p%03d.raw 1 5 2 2\n")
    (tmp_path / "old.nhdr").write_text(common + "datafile: old.raw\n")
    (tmp_path / "abs.nhdr").write_text(common + f"data file: {elsewhere}\n")
    (tmp_path / "list.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 2 2\nElementType = MET_UCHAR\n"
        "ElementDataFile = LIST 2D\ns1.raw\ns2.raw\n")
    (tmp_path / "pattern.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 2 3\nElementType = MET_UCHAR\n"
        "ElementDataFile = p%03d.raw 1 5 2\n")
    expected = {
        "list.nhdr": ["s1.raw", "s2.raw"], "pattern.nhdr": ["p001.raw", "p003.raw", "p005.raw"],
        "old.nhdr": ["old.raw"], "abs.nhdr": [str(elsewhere)],
        "list.mhd": ["s1.raw", "s2.raw"], "pattern.mhd": ["p001.raw", "p003.raw", "p005.raw"],
    }
    for header, files in expected.items():
        assert data_files(tmp_path / header) == [tmp_path / f for f in files], header
        for name in files:
            with pytest.raises(OutputIsInputError, match="voxel file"):
                guard_outputs([tmp_path / header], [tmp_path / name], input_names=["--labels"])
    # A key/value pair that merely mentions a data file names none.
    (tmp_path / "kv.nhdr").write_text(common + "data file:=x.raw\nencoding2: raw\n")
    assert data_files(tmp_path / "kv.nhdr") == []


def test_an_analyze_pair_protects_its_img(tmp_path):
    image = _image()
    sitk.WriteImage(image, str(tmp_path / "pair.hdr"))
    assert (tmp_path / "pair.img").is_file()
    with pytest.raises(OutputIsInputError, match="pair.img"):
        guard_outputs([tmp_path / "pair.hdr"], [tmp_path / "pair.img"])
    with pytest.raises(OutputIsInputError, match="pair.hdr"):
        guard_outputs([tmp_path / "pair.img"], [tmp_path / "pair.hdr"])
    guard_outputs([tmp_path / "pair.hdr"], [tmp_path / "other.img"])  # any other name is fine


# ------------------------------------------------------------------ 2. truncated NIfTI
def _truncated_copies(tmp_path):
    image = _image((40, 64, 64), seed=1)
    whole_gz, whole_nii = tmp_path / "whole.nii.gz", tmp_path / "whole.nii"
    sitk.WriteImage(image, str(whole_gz), useCompression=True)
    sitk.WriteImage(image, str(whole_nii), useCompression=False)
    half_gz, half_nii = tmp_path / "half.nii.gz", tmp_path / "half.nii"
    data = whole_gz.read_bytes()
    half_gz.write_bytes(data[: len(data) // 2])
    data = whole_nii.read_bytes()
    half_nii.write_bytes(data[: len(data) // 2])
    return whole_gz, whole_nii, half_gz, half_nii


def test_a_truncated_nifti_is_refused_not_zero_filled(tmp_path):
    whole_gz, whole_nii, half_gz, half_nii = _truncated_copies(tmp_path)
    assert read_volume(whole_gz).shape == (40, 64, 64)
    assert read_volume(whole_nii).shape == (40, 64, 64)
    # SimpleITK itself reads both halves without a word (zeros where the data is missing).
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(half_nii)))[-1] == 0).all()
    for half in (half_gz, half_nii):
        with pytest.raises(FileFormatError, match="truncated"):
            read_volume(half)


def test_a_gzip_stream_cut_at_its_trailer_or_corrupted_is_refused(tmp_path):
    whole_gz = _truncated_copies(tmp_path)[0]
    data = whole_gz.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[:-4])  # every voxel there, only the length field of the trailer lost
    with pytest.raises(FileFormatError, match="truncated"):
        read_volume(cut)
    flipped = bytearray(data)
    flipped[-8] ^= 0xFF  # the CRC of the trailer
    damaged = tmp_path / "crc.nii.gz"
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(FileFormatError, match="damaged"):
        read_volume(damaged)
    # Two gzip members (a legal concatenation) hold the same file.
    raw = gzip.decompress(data)
    joined = tmp_path / "joined.nii.gz"
    joined.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert read_volume(joined).shape == (40, 64, 64)


def test_a_truncated_label_map_and_img_are_refused_by_the_cli(tmp_path, capsys):
    image = _image((40, 64, 64), seed=2)
    volume = tmp_path / "vol.nii.gz"
    sitk.WriteImage(image, str(volume))
    labels = tmp_path / "lab.nii"
    sitk.WriteImage(_labels(image), str(labels), useCompression=False)
    labels.write_bytes(labels.read_bytes()[:-100])
    out = tmp_path / "o.seg.nrrd"
    rc = _propagate(volume, labels, out)
    assert rc == 1 and "truncated" in capsys.readouterr().err and not out.exists()
    sitk.WriteImage(image, str(tmp_path / "pair.hdr"))
    img = tmp_path / "pair.img"
    img.write_bytes(img.read_bytes()[:-1000])
    with pytest.raises(FileFormatError, match="pair.img is truncated"):
        read_volume(tmp_path / "pair.hdr")


# ------------------------------------------------------------------ 4. permissions kept
def test_rewriting_an_output_keeps_its_permissions_and_a_new_one_follows_the_umask(case, tmp_path, capsys):
    volume, labels = case
    private_seg, private_map = tmp_path / "private.seg.nrrd", tmp_path / "private.nii.gz"
    for path, mode in ((private_seg, 0o600), (private_map, 0o640)):
        path.write_bytes(b"old")
        os.chmod(path, mode)
    assert _propagate(volume, labels, private_seg) == 0, capsys.readouterr().err
    assert _propagate(volume, labels, private_map) == 0, capsys.readouterr().err
    assert stat.S_IMODE(private_seg.stat().st_mode) == 0o600
    assert stat.S_IMODE(private_map.stat().st_mode) == 0o640
    assert private_seg.read_bytes().startswith(b"NRRD")
    umask = os.umask(0o027)
    try:
        fresh = tmp_path / "fresh.seg.nrrd"
        assert _propagate(volume, labels, fresh) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640


def test_atomic_replace_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    from isegformer.atomic import atomic_replace

    target = tmp_path / "state.json"
    target.write_text("{}")
    os.chmod(target, 0o604)
    with atomic_replace(target) as tmp:
        tmp.write_text('{"a": 1}')
    assert stat.S_IMODE(target.stat().st_mode) == 0o604 and target.read_text() == '{"a": 1}'


# ------------------------------------------------------------------ 5. non-UTF-8 names
def _run_cli(args, cwd) -> subprocess.CompletedProcess:
    """The CLI in its own process: the failure this guards against aborts the interpreter."""
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT), OMP_NUM_THREADS="1")
    code = "import sys; from isegformer.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env,
                          capture_output=True, timeout=300)


def test_a_non_utf8_name_gets_a_clear_error_not_an_abort(case, tmp_path):
    volume, labels = case
    latin1 = os.fsdecode(b"v\xff.nii.gz")
    try:
        (tmp_path / latin1).write_bytes(volume.read_bytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system takes no non-UTF-8 names")
    # an input name
    done = _run_cli(["propagate", latin1, "--labels", str(labels), "--method", "interpolation",
                     "--out", "o.seg.nrrd"], cwd=tmp_path)
    assert done.returncode == 1, done
    assert b"not valid UTF-8" in done.stderr and b"Rename" in done.stderr
    # an output name: refused before the propagation, with no temporary file left
    done = _run_cli(["propagate", str(volume), "--labels", str(labels), "--method", "interpolation",
                     "--out", os.fsdecode(b"o\xff.nii.gz")], cwd=tmp_path)
    assert done.returncode == 1, done
    assert b"not valid UTF-8" in done.stderr and b"label(s) on" not in done.stdout
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".isegformer-tmp")]


def test_the_api_readers_and_writers_refuse_a_non_utf8_name(case, tmp_path):
    volume, _ = case
    name = tmp_path / os.fsdecode(b"w\xfe.nii.gz")
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        read_volume(name)
    with pytest.raises(InvalidInputError, match="not valid UTF-8"):
        write_volume(read_volume(volume), name)
    assert not list(tmp_path.glob(".isegformer-tmp*"))


# ------------------------------------------------------------------ 7. output checks first
@pytest.mark.parametrize("out", ["o.nhdr", "o.png", "o_noext"])
def test_propagate_refuses_a_bad_out_suffix_before_propagating(case, tmp_path, capsys, out):
    volume, labels = case
    rc = _propagate(volume, labels, tmp_path / out)
    captured = capsys.readouterr()
    assert rc == 1
    assert "label(s) on" not in captured.out  # nothing was read or propagated
    assert "--out" in captured.err and ".seg.nrrd" in captured.err
    assert "save_segmentation" not in captured.err and "Session." not in captured.err


def test_evaluate_clicks_makes_its_out_folder_before_the_evaluation(case, golden_dir, tmp_path, capsys):
    volume, labels = case
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["evaluate-clicks", "--model", str(golden_dir / "tiny_isegformer.pth"), "--device", "cpu",
               "--volume", str(volume), "--labels", str(labels), "--max-clicks", "2",
               "--out", str(blocker / "noc")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Cannot create the output folder" in captured.err
    assert "NoC" not in captured.out and "noc@" not in captured.out  # no table: nothing was evaluated


# ------------------------------------------------------------------ 8. names, device, coordinates
@pytest.mark.parametrize("bad", ["a\rb", "a\u2028b", "a\x1cb", "a\x85b", "a\x7fb"])
def test_a_segment_name_that_would_break_the_header_is_refused(bad):
    from isegformer import arguments

    with pytest.raises(InvalidInputError, match="control or line-break"):
        arguments.name(bad)


def test_segment_refuses_a_carriage_return_in_the_name_before_loading_anything(case, tmp_path, capsys):
    volume, _ = case
    clicks = tmp_path / "c.mrk.json"
    from isegformer.output.markups import ClickPoint, write_clicks

    write_clicks(clicks, [ClickPoint((0.0, 0.0, 0.0))])
    rc = main(["segment", str(volume), "--clicks", str(clicks), "--segment", "a\rb",
               "--model", str(tmp_path / "missing.pth"), "--device", "cpu", "--out", str(tmp_path / "o.seg.nrrd")])
    assert rc == 1 and "control or line-break" in capsys.readouterr().err


def test_the_nrrd_reader_keeps_a_unicode_line_separator_inside_a_value(case, tmp_path):
    from isegformer.output.seg_nrrd import SegmentInfo, read_seg_nrrd, write_seg_nrrd

    volume = read_volume(case[0])
    mask = np.zeros(volume.shape, bool)
    mask[2, 5:9, 5:9] = True
    path = write_seg_nrrd(tmp_path / "s.seg.nrrd", [mask], [SegmentInfo("aXXb")], volume.ijk_to_ras)
    data = path.read_bytes()
    # A name Slicer wrote with U+2028 in it (Slicer reads such a file).
    path.write_bytes(data.replace(b"aXXb", "a\u2028b".encode(), 1))
    assert [s.name for s in read_seg_nrrd(path).segments] == ["a\u2028b"]


@pytest.mark.parametrize("device", ["mps", "xpu", "meta"])
def test_an_unavailable_device_is_the_packages_error(device):
    import torch

    from isegformer.device import resolve_device

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this torch has MPS")
    if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("this torch has XPU")
    with pytest.raises(InvalidInputError, match="--device cpu|'auto', 'cpu'"):
        resolve_device(device)


def test_segment_with_device_xpu_says_so_without_a_traceback(case, golden_dir, tmp_path, capsys):
    import torch

    if hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("this torch has XPU")
    volume, _ = case
    from isegformer.output.markups import ClickPoint, write_clicks

    clicks = write_clicks(tmp_path / "c.mrk.json", [ClickPoint((0.0, 0.0, 0.0))])
    rc = main(["segment", str(volume), "--clicks", str(clicks), "--model", str(golden_dir / "tiny_isegformer.pth"),
               "--device", "xpu", "--out", str(tmp_path / "o.seg.nrrd")])
    err = capsys.readouterr().err
    assert rc == 1 and "XPU" in err and "Traceback" not in err


def test_a_coordinate_too_large_for_a_float_names_the_file(tmp_path):
    from isegformer.output.markups import ClickPoint, read_clicks, write_clicks

    path = write_clicks(tmp_path / "huge.mrk.json", [ClickPoint((1.0, 2.0, 3.0))])
    document = json.loads(path.read_text())
    document["markups"][0]["controlPoints"][0]["position"][0] = 123456789
    # A JSON integer of 400 digits: valid JSON, but no float holds it.
    path.write_text(json.dumps(document).replace("123456789", "9" * 400))
    with pytest.raises(FileFormatError, match="huge.mrk.json.*control point 1"):
        read_clicks(path)
