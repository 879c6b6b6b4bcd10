"""`.seg.nrrd` files: the format itself, hostile files, and slicerio as a second reader.

Slicer's own storage node is the primary witness (test_slicer_storage.py: our files read by
vtkMRMLSegmentationStorageNode, Slicer's files read by us); slicerio stays as an independent
pure-Python reader of the same layout, and these tests also run where slicer-core is absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from isegformer.errors import FileFormatError, InvalidInputError
from isegformer.output.atomic import OutputPathError
from isegformer.output.seg_nrrd import SegmentInfo, read_seg_nrrd, write_seg_nrrd
from isegformer.volume import read_volume

slicerio = pytest.importorskip("slicerio")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_ijk_to_ras() -> np.ndarray:
    """A rotated, anisotropic grid, so that no axis or sign mix-up can pass unnoticed."""
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    permute = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ permute @ np.diag([0.5, 0.75, 2.0])
    matrix[:3, 3] = [12.5, -30.25, 7.0]
    return matrix


def blob_masks(shape=(6, 9, 11)):
    rng = np.random.default_rng(3)
    first = np.zeros(shape, bool)
    first[1:4, 2:6, 3:9] = True
    second = np.zeros(shape, bool)
    second[3:6, 6:9, 0:3] = True
    third = rng.random(shape) > 0.7  # overlaps both
    return first, second, third


def slicerio_mask_kji(segmentation, name):
    # slicerio (through pynrrd) gives (i, j, k) arrays
    return np.transpose(slicerio.segment_mask(segmentation, name), (2, 1, 0))


def test_slicerio_reads_our_geometry_names_colours_and_masks(tmp_path):
    first, second, _ = blob_masks()
    matrix = oblique_ijk_to_ras()
    infos = [
        SegmentInfo("femur", (0.9, 0.1, 0.2), label_value=1),
        SegmentInfo("femoral cartilage", (0.2, 0.6, 1.0), label_value=7, tags={"Segmentation.Status": "inprogress"}),
    ]
    path = write_seg_nrrd(tmp_path / "two.seg.nrrd", [first, second], infos, matrix)

    seg = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(LPS_TO_RAS @ seg["ijkToLPS"], matrix, atol=1e-12)
    assert seg["voxels"].shape == first.shape[::-1]  # one shared layer: a 3D file
    assert [s["name"] for s in seg["segments"]] == ["femur", "femoral cartilage"]
    assert [s["labelValue"] for s in seg["segments"]] == [1, 7]
    np.testing.assert_allclose(seg["segments"][0]["color"], [0.9, 0.1, 0.2], atol=1e-6)
    np.testing.assert_allclose(seg["segments"][1]["color"], [0.2, 0.6, 1.0], atol=1e-6)
    assert seg["segments"][1]["status"] == "inprogress"
    assert seg["masterRepresentation"] == "Binary labelmap"
    assert seg["containedRepresentationNames"] == ["Binary labelmap"]
    assert seg["referenceImageExtentOffset"] == [0, 0, 0]
    # Slicer's editing grid: IJK-to-RAS row by row, then the extent; "&" ends each parameter
    (parameter,) = seg["conversionParameters"]
    assert parameter["name"] == "Reference image geometry"
    values = [float(v) for v in parameter["value"].rstrip(";").split(";")]
    np.testing.assert_allclose(values[:16], matrix.ravel(), atol=1e-12)
    assert values[16:] == [0, first.shape[2] - 1, 0, first.shape[1] - 1, 0, first.shape[0] - 1]
    assert read_seg_nrrd(path).fields["Segmentation_ConversionParameters"].endswith("&")
    np.testing.assert_array_equal(slicerio_mask_kji(seg, "femur"), first)
    np.testing.assert_array_equal(slicerio_mask_kji(seg, "femoral cartilage"), second)

    # Slicer's extent: imin imax jmin jmax kmin kmax of the voxels present
    k, j, i = np.nonzero(second)
    assert seg["segments"][1]["extent"] == [i.min(), i.max(), j.min(), j.max(), k.min(), k.max()]


def test_overlapping_segments_go_to_layers_and_read_back(tmp_path):
    masks = blob_masks()
    infos = [SegmentInfo(f"s{n}", (0.1 * n, 0.5, 0.5), label_value=n + 1) for n in range(3)]
    path = write_seg_nrrd(tmp_path / "overlap.seg.nrrd", masks, infos, oblique_ijk_to_ras())

    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].ndim == 4  # overlapping segments need a second layer
    layers = [s["layer"] for s in seg["segments"]]
    assert layers[0] == layers[1] != layers[2]  # the disjoint ones share a layer
    for n, mask in enumerate(masks):
        np.testing.assert_array_equal(slicerio_mask_kji(seg, f"s{n}"), mask)

    ours = read_seg_nrrd(path)
    np.testing.assert_allclose(ours.ijk_to_ras, oblique_ijk_to_ras(), atol=1e-12)
    assert [s.name for s in ours.segments] == ["s0", "s1", "s2"]
    for n, mask in enumerate(masks):
        np.testing.assert_array_equal(ours.mask(n), mask)


def test_empty_segment_has_slicers_empty_extent(tmp_path):
    first, _, _ = blob_masks()
    empty = np.zeros_like(first)
    path = write_seg_nrrd(
        tmp_path / "e.seg.nrrd", [first, empty], [SegmentInfo("a"), SegmentInfo("b", label_value=2)], np.eye(4)
    )
    seg = slicerio.read_segmentation(str(path))
    assert seg["segments"][1]["extent"] == [0, -1, 0, -1, 0, -1]
    assert not slicerio_mask_kji(seg, "b").any()


def test_we_read_segmentations_slicer_wrote():
    data = Path(slicerio.__file__).parent / "data"
    files = [data / "Segmentation.seg.nrrd", data / "SegmentationOverlapping.seg.nrrd"]
    if not all(f.exists() for f in files):
        pytest.skip("slicerio's sample segmentations are not installed")
    for file in files:
        theirs = slicerio.read_segmentation(str(file))
        ours = read_seg_nrrd(file)
        np.testing.assert_allclose(ours.ijk_to_ras, LPS_TO_RAS @ theirs["ijkToLPS"], atol=1e-9)
        assert [s.name for s in ours.segments] == [s["name"] for s in theirs["segments"]]
        for info in theirs["segments"]:
            np.testing.assert_array_equal(ours.mask(info["id"]), slicerio_mask_kji(theirs, info["id"]))
            assert ours.segments[ours.index(info["id"])].label_value == info["labelValue"]


def test_we_read_what_slicerio_writes(tmp_path):
    first, second, _ = blob_masks()
    voxels = (first * 1 + second * 2).astype(np.uint8)
    ijk_to_lps = np.diag([-0.5, -0.5, 3.0, 1.0])
    ijk_to_lps[:3, 3] = [10, 20, 30]
    segmentation = slicerio.create_segmentation(voxels.shape[::-1], ijk_to_lps)
    segmentation["voxels"] = np.transpose(voxels, (2, 1, 0))
    segmentation["segments"] = [
        {"id": "Segment_1", "name": "liver", "labelValue": 1, "color": [1.0, 0.0, 0.0]},
        {"id": "Segment_2", "name": "spleen", "labelValue": 2, "color": [0.0, 0.0, 1.0]},
    ]
    slicerio.write_segmentation(str(tmp_path / "s.seg.nrrd"), segmentation)

    ours = read_seg_nrrd(tmp_path / "s.seg.nrrd")
    np.testing.assert_allclose(ours.ijk_to_ras, LPS_TO_RAS @ ijk_to_lps)
    np.testing.assert_array_equal(ours.mask("liver"), first)
    np.testing.assert_array_equal(ours.mask("spleen"), second)
    assert ours.segments[1].color == (0.0, 0.0, 1.0)


@pytest.mark.data
def test_geometry_of_a_real_volume_matches_simpleitk(tmp_path, data_dir):
    """The file's grid is the volume's grid, as SimpleITK (another reader) sees it."""
    import SimpleITK as sitk

    volume = read_volume(data_dir / "radiomics_brain" / "brain1_image.nrrd")
    label = read_volume(data_dir / "radiomics_brain" / "brain1_label.nrrd").array > 0
    path = write_seg_nrrd(tmp_path / "brain.seg.nrrd", [label], [SegmentInfo("tumour")], volume.ijk_to_ras)

    image = sitk.ReadImage(str(path))
    reference = sitk.ReadImage(str(data_dir / "radiomics_brain" / "brain1_image.nrrd"))
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image) > 0, label)


def test_not_a_nrrd_is_a_clear_error(tmp_path):
    path = tmp_path / "x.seg.nrrd"
    path.write_text("hello")
    with pytest.raises(FileFormatError, match="not a NRRD"):
        read_seg_nrrd(path)


def test_truncated_file_is_a_clear_error(tmp_path):
    first, _, _ = blob_masks()
    path = write_seg_nrrd(tmp_path / "t.seg.nrrd", [first], [SegmentInfo("a")], np.eye(4), compress=False)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(FileFormatError, match="truncated"):
        read_seg_nrrd(path)


def test_masks_on_different_grids_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="same grid"):
        write_seg_nrrd(
            tmp_path / "x.seg.nrrd",
            [np.zeros((2, 3, 4), bool), np.zeros((2, 3, 5), bool)],
            [SegmentInfo("a"), SegmentInfo("b", label_value=2)],
            np.eye(4),
        )
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_unwritable_path_leaves_the_old_file(tmp_path):
    first, _, _ = blob_masks()
    with pytest.raises(OutputPathError, match="does not exist"):
        write_seg_nrrd(tmp_path / "missing" / "x.seg.nrrd", [first], [SegmentInfo("a")], np.eye(4))

    target = write_seg_nrrd(tmp_path / "keep.seg.nrrd", [first], [SegmentInfo("a")], np.eye(4))
    before = target.read_bytes()
    if os.geteuid() != 0:  # root ignores permissions
        os.chmod(tmp_path, 0o500)
        try:
            with pytest.raises(OutputPathError):
                write_seg_nrrd(target, [~first], [SegmentInfo("a")], np.eye(4))
        finally:
            os.chmod(tmp_path, 0o700)
    with pytest.raises(OutputPathError, match="folder"):
        write_seg_nrrd(tmp_path, [first], [SegmentInfo("a")], np.eye(4))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.seg.nrrd"]  # no temporary left behind


@pytest.mark.data
def test_label_map_files_keep_the_grid_and_refuse_another_grid(tmp_path, data_dir):
    from isegformer.output.labelmap import read_label_map, write_label_map

    volume = read_volume(data_dir / "radiomics_brain" / "brain1_image.nrrd")
    labels = np.zeros(volume.shape, np.uint8)
    labels[10:12, 100:140, 90:150] = 2
    labels[5, 5:9, 5:9] = 1
    for name in ("l.nii.gz", "l.nrrd"):
        path = write_label_map(tmp_path / name, labels, volume)
        np.testing.assert_array_equal(read_label_map(path, volume), labels)
        assert read_volume(path).ijk_to_ras == pytest.approx(volume.ijk_to_ras, abs=1e-6)

    seg = write_seg_nrrd(tmp_path / "l.seg.nrrd", [labels == 1, labels == 2],
                         [SegmentInfo("a"), SegmentInfo("b", label_value=2)], volume.ijk_to_ras)
    np.testing.assert_array_equal(read_label_map(seg, volume), labels)

    shifted = volume.ijk_to_ras.copy()
    shifted[:3, 3] += 5.0
    other = write_seg_nrrd(tmp_path / "o.seg.nrrd", [labels == 1], [SegmentInfo("a")], shifted)
    with pytest.raises(InvalidInputError, match="origin"):
        read_label_map(other, volume)


def test_label_values_above_255_use_16_bit_voxels(tmp_path):
    first, second, _ = blob_masks()
    infos = [SegmentInfo("low", label_value=3), SegmentInfo("high", label_value=300)]
    path = write_seg_nrrd(tmp_path / "wide.seg.nrrd", [first, second], infos, np.eye(4))
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].dtype.itemsize == 2
    np.testing.assert_array_equal(slicerio_mask_kji(seg, "high"), second)
    np.testing.assert_array_equal(read_seg_nrrd(path).mask("high"), second)


# --- hostile or inconsistent files (issue 12, items 5 and 22) ----------------------------------
def _raw_file(tmp_path, name="x.seg.nrrd"):
    first, second, _ = blob_masks()
    return write_seg_nrrd(tmp_path / name, [first, second], [SegmentInfo("a"), SegmentInfo("b", label_value=2)],
                          np.eye(4), compress=False)


def _edit_header(path, old: str, new: str):
    data = path.read_bytes()
    end = data.index(b"\n\n")
    header = data[:end].decode()
    assert old in header
    path.write_bytes(header.replace(old, new).encode() + data[end:])
    return path


def test_segment_with_label_value_zero_is_refused(tmp_path):
    """Value 0 is the background: such a segment would be every voxel outside the others."""
    path = _edit_header(_raw_file(tmp_path), "Segment0_LabelValue:=1", "Segment0_LabelValue:=0")
    with pytest.raises(FileFormatError, match="label value 0"):
        read_seg_nrrd(path)


@pytest.mark.parametrize("value", ["-3", "256", "99999999999999999999", "1.5", "one"])
def test_segment_label_values_outside_the_voxel_type_are_refused(tmp_path, value):
    path = _edit_header(_raw_file(tmp_path), "Segment1_LabelValue:=2", f"Segment1_LabelValue:={value}")
    with pytest.raises(FileFormatError, match="label value|LabelValue"):
        read_seg_nrrd(path)


@pytest.mark.parametrize("old, new, message", [
    ("dimension: 3", "dimension: three", "dimension"),
    ("sizes: 11 9 6", "sizes: a b c", "sizes"),
    ("sizes: 11 9 6", "sizes: 11 9", "sizes"),
    ("sizes: 11 9 6", "sizes: 11 0 6", "sizes"),
    ("space origin: (0,0,0)", "space origin: (0,zero,0)", "space origin"),
    ("space origin: (0,0,0)", "space origin: (0,1e999,0)", "space origin"),
    ("space directions: (-1.0,0,0) (0,-1.0,0) (0,0,1.0)", "space directions: (-1.0,0,0) (0,-1.0,0)", "space directions"),
    ("space directions: (-1.0,0,0) (0,-1.0,0) (0,0,1.0)", "space directions: (1,0,0) (1,0,0) (0,0,1)", "degenerate"),
    ("encoding: raw", "encoding: bzip2", "encoding"),
    ("type: unsigned char", "type: float", "voxel type"),
    ("type: unsigned char", "type: unsigned char\ndata file: other.raw", "data file"),
    ("type: unsigned char", "type: unsigned char\ntype: short", "twice"),
    ("Segment0_Color:=", "Segment0_Color:=0.5 nan ", "colour"),
    ("Segment1_Layer:=0", "Segment1_Layer:=7", "layer 7"),
    ("Segment1_LabelValue:=2", "Segment1_LabelValue:=1", "cannot be told apart"),
    ("Segment1_ID:=Segment_2", "Segment1_ID:=Segment_1", "unique"),
])
def test_every_header_field_is_validated(tmp_path, old, new, message):
    path = _edit_header(_raw_file(tmp_path), old, new)
    with pytest.raises(FileFormatError, match=message):
        read_seg_nrrd(path)


def test_a_gzip_bomb_is_not_inflated_beyond_what_the_header_declares(tmp_path):
    """1 MB of gzip that inflates to 1 GiB, behind a header that declares 594 voxels."""
    import struct
    import tracemalloc
    import zlib

    path = _raw_file(tmp_path)
    data = path.read_bytes()
    header = data[: data.index(b"\n\n") + 2].decode().replace("encoding: raw", "encoding: gzip")
    # One fully flushed deflate block of 1 MiB of zeros, repeated: a valid gzip stream of 1 GiB.
    chunk = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(chunk, crc)
    body = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + block * 1024
            + zlib.compressobj(9, zlib.DEFLATED, -15).flush() + struct.pack("<II", crc, 0))
    assert len(body) < 2 * 1024 * 1024
    assert len(zlib.decompressobj(wbits=31).decompress(body[:4096])) > 1 << 20  # 4 KB inflate to 4 MB
    path.write_bytes(header.encode() + body)
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match="more voxel data than its header declares"):
            read_seg_nrrd(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"{peak} bytes allocated while reading"


def test_a_header_declaring_too_many_voxels_is_refused_before_reading(tmp_path):
    path = _edit_header(_raw_file(tmp_path), "sizes: 11 9 6", "sizes: 100000 100000 100000")
    with pytest.raises(FileFormatError, match="declares"):
        read_seg_nrrd(path)


def test_truncated_gzip_body_is_a_clear_error(tmp_path):
    first, _, _ = blob_masks()
    path = write_seg_nrrd(tmp_path / "t.seg.nrrd", [first], [SegmentInfo("a")], np.eye(4))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(FileFormatError, match="truncated|corrupt"):
        read_seg_nrrd(path)


def test_overlapping_segments_do_not_flatten_into_one_label_map(tmp_path):
    """A label map holds one value per voxel; the earlier segment would lose the overlap."""
    masks = blob_masks()
    infos = [SegmentInfo(f"s{n}", label_value=n + 1) for n in range(3)]
    path = write_seg_nrrd(tmp_path / "overlap.seg.nrrd", masks, infos, np.eye(4))
    with pytest.raises(InvalidInputError, match="overlap in [0-9]+ voxels"):
        read_seg_nrrd(path).label_map()
    disjoint = write_seg_nrrd(tmp_path / "disjoint.seg.nrrd", masks[:2], infos[:2], np.eye(4))
    labels = read_seg_nrrd(disjoint).label_map()
    np.testing.assert_array_equal(labels, masks[0] * 1 + masks[1] * 2)


def test_a_huge_declared_size_over_a_tiny_body_allocates_nothing_large(tmp_path):
    """2 GB declared, 100 bytes present: refused as truncated without reserving the 2 GB."""
    import tracemalloc

    first, _, _ = blob_masks()
    path = write_seg_nrrd(tmp_path / "t.seg.nrrd", [first], [SegmentInfo("a")], np.eye(4))
    path = _edit_header(path, "sizes: 11 9 6", "sizes: 2000 2000 500")
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match="truncated"):
            read_seg_nrrd(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated while reading"


def test_annotating_from_a_seg_nrrd_keeps_overlapping_segments_apart(tmp_path):
    """Issue 12 item 10: the segments were flattened into one label map (the later one won), so
    the earlier segment's annotated slices lost the overlap."""
    from isegformer.session import Session

    matrix = oblique_ijk_to_ras()
    masks = blob_masks()
    infos = [SegmentInfo("femur", (0.9, 0.1, 0.2), label_value=1), SegmentInfo("tibia", (0.1, 0.2, 0.9), label_value=2),
             SegmentInfo("cartilage", (0.2, 0.9, 0.1), label_value=3)]
    path = write_seg_nrrd(tmp_path / "drawn.seg.nrrd", masks, infos, matrix)
    session = Session.open((np.zeros(masks[0].shape, np.int16), matrix))
    annotated = session.annotate_from_label_map(path, axis=0, indices=[1, 3, 4])
    assert annotated == [1, 3, 4]
    assert [(s.name, s.color) for s in session.segments] == [(i.name, i.color) for i in infos]
    assert (masks[0] & masks[2])[[1, 3, 4]].any()  # the overlap is on the annotated slices
    for segment, mask in zip(session.segments, masks):
        for index in annotated:
            np.testing.assert_array_equal(segment.annotation(0, index).mask, mask[index])
    session.undo()
    assert session.segments == []  # one undoable action, segments included


def test_more_segment_masks_than_the_reader_builds_are_refused(tmp_path, monkeypatch):
    """A header may list many segments: each becomes a full-grid mask, so their total is bounded."""
    import isegformer.output.seg_nrrd as seg_module

    masks = blob_masks()
    path = write_seg_nrrd(tmp_path / "m.seg.nrrd", masks, [SegmentInfo(f"s{n}", label_value=n + 1) for n in range(3)],
                          np.eye(4))
    monkeypatch.setattr(seg_module, "MAX_VOXEL_BYTES", 2 * masks[0].size)  # room for two masks, not three
    with pytest.raises(FileFormatError, match="3 segments"):
        read_seg_nrrd(path)
