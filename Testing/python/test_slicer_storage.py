"""Files through Slicer's own readers and writers (slicer-core's storage nodes), in both directions.

Slicer is the witness here: ``vtkMRMLSegmentationStorageNode`` reads what the package writes and
writes what the package reads, ``vtkMRMLMarkupsJsonStorageNode`` does the same for clicks, and
``vtkMRMLVolumeArchetypeStorageNode`` (what ``slicer.util.loadVolume`` uses) loads the volumes the
package loads. Voxels are compared through world coordinates, computed here from each side's own
IJK-to-RAS matrix, never through the package's grid code.

What Slicer does that a reader must expect (each is asserted below):

- the volume storage node reverses K of a left-handed image (``ForceRightHandedIJKCoordinateSystem``,
  Slicer 5.8+), and segmentations made on it are saved on that K-flipped grid;
- "crop to minimum extent" saves only the box around the segments, origin moved to the box;
- overlapping segments go to separate layers (a 4D file), each segment's label value often 1;
- a ``.mrk.json`` holds no list name; a point's description is kept; the package's own
  ``isegformer`` object on each point is dropped when Slicer saves the list again;
- the volume storage node loads a DICOM series with a missing slice as an evenly spaced volume
  (only Slicer's DICOM module, which slicer-core lacks, checks the slice positions).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip(
    "slicer", reason="slicer-core (Slicer's MRML and storage nodes) is not installed: pip install slicer-core"
)
if not hasattr(slicer, "vtkMRMLSegmentationStorageNode"):
    pytest.skip("the 'slicer' module found is not slicer-core's (no vtkMRMLSegmentationStorageNode)",
                allow_module_level=True)

import slicer.util  # noqa: E402
import vtk  # noqa: E402

from isegformer.cli.main import main  # noqa: E402
from isegformer.errors import FileFormatError, InvalidInputError  # noqa: E402
from isegformer.output.markups import ClickPoint, read_clicks, write_clicks  # noqa: E402
from isegformer.output.seg_nrrd import SegmentInfo, read_seg_nrrd, write_seg_nrrd  # noqa: E402
from isegformer.volume import Volume, read_label_map, read_volume  # noqa: E402

BRAIN = "radiomics_brain/brain1_image.nrrd"  # left-handed: Slicer reverses its K axis
KNEE_DICOM = "knee_dess_dicom"
SYNTHETIC_DICOM = "synthetic DICOM series"  # written by SimpleITK in the test's folder


# --------------------------------------------------------------------------- Slicer helpers
@pytest.fixture(scope="module", autouse=True)
def segmentation_converters():
    """What the Segmentations module registers at application start: without these rules a
    segmentation has no binary labelmap representation to create or write."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    yield


def as_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def node_ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return as_array(matrix)


def slicer_load_volume(scene, path: Path):
    """A scalar volume node as Slicer loads a file (for a DICOM folder: its first file, which
    the archetype reader expands to the series)."""
    if path.is_dir():
        path = sorted(path.glob("*.dcm"))[0]
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer's volume storage node could not read {path}"
    return node


def slicer_segmentation(scene, reference, segments):
    """A segmentation node on ``reference``'s geometry; ``segments`` are (name, colour, mask)
    with masks indexed like ``slicer.util.arrayFromVolume(reference)``."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for name, color, mask in segments:
        segment_id = node.GetSegmentation().AddEmptySegment(name, name, color)
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        scene.AddNode(labelmap)
        labelmap.CopyOrientation(reference)
        slicer.util.updateVolumeFromArray(labelmap, mask.astype(np.uint8))
        image = logic.CreateOrientedImageDataFromVolumeNode(labelmap)
        assert logic.SetBinaryLabelmapToSegment(image, node, segment_id, logic.MODE_REPLACE, image.GetExtent())
        scene.RemoveNode(labelmap)
    return node


def slicer_save_segmentation(scene, node, path: Path, crop: bool) -> Path:
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    storage.SetCropToMinimumExtent(crop)
    assert storage.WriteData(node), f"Slicer could not write {path}"
    return path


def slicer_read_segmentation(scene, path: Path):
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer's segmentation storage node could not read {path}"
    return node


def slicer_export(scene, segmentation, segment_id: str, reference) -> np.ndarray:
    """A segment's voxels on the reference volume's grid, by Slicer's own export."""
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    scene.AddNode(labelmap)
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, ids, labelmap, reference)
    return np.array(slicer.util.arrayFromVolume(labelmap)) > 0


def map_mask(mask: np.ndarray, from_ijk_to_ras: np.ndarray, to_ijk_to_ras: np.ndarray, to_shape) -> np.ndarray:
    """``mask`` moved to another grid through world coordinates: each voxel centre must land on a
    voxel centre of the other grid (it does for the same physical lattice)."""
    k, j, i = np.nonzero(mask)
    ijk1 = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    target = np.linalg.inv(to_ijk_to_ras) @ from_ijk_to_ras @ ijk1
    rounded = np.rint(target[:3]).astype(int)
    assert np.abs(target[:3] - rounded).max(initial=0.0) < 1e-3, "the grids are not the same lattice"
    out = np.zeros(to_shape, bool)
    x, y, z = rounded
    inside = (x >= 0) & (y >= 0) & (z >= 0) & (z < to_shape[0]) & (y < to_shape[1]) & (x < to_shape[2])
    assert inside.all(), "voxels land outside the other grid"
    out[z, y, x] = True
    return out


def boxes(shape, seed=0):
    """Two overlapping boxes and a third disjoint from the first, inside ``shape`` (k, j, i)."""
    K, J, I = shape
    first = np.zeros(shape, bool)
    first[K // 5: K // 2, J // 3: J // 2, I // 3: I // 2] = True
    second = np.zeros(shape, bool)
    second[K // 3: 3 * K // 4, 2 * J // 5: 2 * J // 3, 2 * I // 5: 2 * I // 3] = True
    third = np.zeros(shape, bool)
    third[K // 2: K - 1, 3 * J // 4: J - 2, 3 * I // 4: I - 2] = True
    assert (first & second).any() and not (first & third).any()
    return first, second, third


# --------------------------------------------------------------------- .seg.nrrd, ours -> Slicer
def oblique_volume(tmp_path: Path) -> Path:
    """A rotated, anisotropic, left-handed grid written by SimpleITK."""
    angle = np.deg2rad(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    direction = rotation @ np.diag([1.0, 1.0, -1.0])  # det -1: left-handed
    image = sitk.GetImageFromArray(np.random.default_rng(2).integers(0, 500, (9, 14, 17)).astype(np.int16))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((12.5, -30.25, 7.0))
    image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.data
@pytest.mark.parametrize("grid", ["left-handed brain", "oblique left-handed"])
def test_slicer_reads_our_seg_nrrd_names_colours_layers_labels_geometry_and_voxels(tmp_path, data_dir, grid):
    image_path = data_dir / BRAIN if grid == "left-handed brain" else oblique_volume(tmp_path)
    volume = read_volume(image_path)
    first, second, third = boxes(volume.shape)
    infos = [
        SegmentInfo("tumour", (0.9, 0.1, 0.2), label_value=1),
        SegmentInfo("oedema", (0.2, 0.6, 1.0), label_value=7),   # overlaps the tumour
        SegmentInfo("vessel", (0.3, 0.8, 0.1), label_value=3),   # disjoint from the tumour
    ]
    masks = [first, second, third]
    path = write_seg_nrrd(tmp_path / "ours.seg.nrrd", masks, infos, volume.ijk_to_ras)

    scene = slicer.vtkMRMLScene()
    node = slicer_read_segmentation(scene, path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    ids = [segmentation.GetNthSegmentID(n) for n in range(3)]
    assert ids == ["Segment_1", "Segment_7", "Segment_3"]
    for segment_id, info in zip(ids, infos):
        segment = segmentation.GetSegment(segment_id)
        assert segment.GetName() == info.name
        np.testing.assert_allclose(segment.GetColor(), info.color, atol=1e-6)
        assert segment.GetLabelValue() == info.label_value
    layers = [segmentation.GetLayerIndex(segment_id) for segment_id in ids]
    assert segmentation.GetNumberOfLayers() == 2
    assert layers[0] == layers[2] != layers[1]  # the overlapping one has a layer of its own
    # Slicer keeps the file's own (right- or left-handed) grid for the segmentation
    for segment_id in ids:
        labelmap = node.GetBinaryLabelmapInternalRepresentation(segment_id)
        matrix = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(matrix)
        np.testing.assert_allclose(as_array(matrix), volume.ijk_to_ras, atol=1e-6)
    # voxel-exact on Slicer's own grid of the image (K-flipped for a left-handed image)
    reference = slicer_load_volume(scene, image_path)
    slicer_matrix = node_ijk_to_ras(reference)
    assert np.linalg.det(slicer_matrix[:3, :3]) > 0 > np.linalg.det(volume.ijk_to_ras[:3, :3])
    for segment_id, mask in zip(ids, masks):
        exported = slicer_export(scene, node, segment_id, reference)
        assert exported.sum() == mask.sum()
        np.testing.assert_array_equal(map_mask(exported, slicer_matrix, volume.ijk_to_ras, volume.shape), mask)


# --------------------------------------------------------------------- .seg.nrrd, Slicer -> ours
def slicer_made_file(tmp_path, data_dir, source: str, crop: bool, overlap: bool = True):
    """A .seg.nrrd made and saved by Slicer on the volume as Slicer loads it; returns the path,
    the project's Volume of the same source, and each segment's true mask on the project's grid."""
    if source == SYNTHETIC_DICOM:
        from dicom_testkit import write_dicom_series

        source_path = tmp_path / "series"
        write_dicom_series(source_path, np.random.default_rng(4).integers(0, 999, (14, 40, 36)),
                           spacing=(0.5, 0.6, 1.5))
    else:
        source_path = data_dir / source
    scene = slicer.vtkMRMLScene()
    reference = slicer_load_volume(scene, source_path)
    shape = slicer.util.arrayFromVolume(reference).shape
    first, second, third = boxes(shape)
    chosen = [("femur", (1.0, 0.0, 0.0), first), ("cartilage", (0.0, 1.0, 0.0), second if overlap else third)]
    node = slicer_segmentation(scene, reference, chosen)
    assert node.GetSegmentation().GetNumberOfLayers() == (2 if overlap else 1)
    path = slicer_save_segmentation(scene, node, tmp_path / f"slicer_{'crop' if crop else 'full'}.seg.nrrd", crop)
    volume = read_volume(source_path)
    truth = [map_mask(mask, node_ijk_to_ras(reference), volume.ijk_to_ras, volume.shape) for _, _, mask in chosen]
    return path, volume, truth


@pytest.mark.data
@pytest.mark.parametrize("source, crop", [
    (BRAIN, False),        # left-handed: saved on the K-flipped grid
    (BRAIN, True),         # ... and cropped to the segments' box
    (SYNTHETIC_DICOM, False),  # a DICOM series, loaded by Slicer from one of its files
    pytest.param(KNEE_DICOM, True, marks=pytest.mark.slow),  # a real one, 512x512x80 (~10 s)
])
def test_we_read_slicers_seg_nrrd_on_the_volumes_grid(tmp_path, data_dir, source, crop):
    path, volume, truth = slicer_made_file(tmp_path, data_dir, source, crop)
    theirs = read_seg_nrrd(path)
    assert [s.name for s in theirs.segments] == ["femur", "cartilage"]
    assert [s.layer for s in theirs.segments] == [0, 1]  # overlapping: Slicer wrote two layers
    assert [s.label_value for s in theirs.segments] == [1, 1]
    if source == BRAIN:  # what the package must expect from Slicer 5.8+
        np.testing.assert_allclose(theirs.ijk_to_ras[:3, 2], -volume.ijk_to_ras[:3, 2], atol=1e-9)
    assert (theirs.shape != volume.shape) == crop
    placed = theirs.on_grid(volume)
    assert placed.shape == volume.shape
    for mask, expected in zip(placed.masks, truth):
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.data
def test_session_and_propagate_keep_overlapping_segments_of_slicers_file(tmp_path, data_dir, capsys):
    """propagate --labels x.seg.nrrd used to flatten the segments (the later one won); each
    segment must keep its annotated slices, overlap included (issue 12 items 10 and 11)."""
    from isegformer.session import Session

    path, volume, truth = slicer_made_file(tmp_path, data_dir, BRAIN, crop=True)
    overlap = truth[0] & truth[1]
    assert overlap.sum() > 1000
    annotated = sorted(set(np.flatnonzero(truth[0].any(axis=(1, 2)))) | set(np.flatnonzero(truth[1].any(axis=(1, 2)))))

    session = Session.open(volume)
    assert session.annotate_from_label_map(path, axis=0) == annotated
    assert [s.name for s in session.segments] == ["femur", "cartilage"]
    assert [s.color for s in session.segments] == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
    for segment, expected in zip(session.segments, truth):
        for index in annotated:
            np.testing.assert_array_equal(session.segment(segment.name).annotation(0, index).mask, expected[index])

    out = tmp_path / "propagated.seg.nrrd"
    rc = main(["propagate", str(data_dir / BRAIN), "--labels", str(path), "--method", "interpolation",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = read_seg_nrrd(out).on_grid(volume)
    assert [s.name for s in result.segments] == ["femur", "cartilage"]
    for mask, expected in zip(result.masks, truth):
        np.testing.assert_array_equal(mask[annotated], expected[annotated])
    assert (result.masks[0] & result.masks[1])[annotated].sum() == overlap[annotated].sum()


@pytest.mark.data
def test_every_label_reading_verb_reads_slicers_file_or_refuses_an_overlap(tmp_path, data_dir, capsys):
    """evaluate-propagation, evaluate-clicks (volume_samples) and finetune (slices_from_volume)
    read label maps through the one reader: Slicer's K-flipped, cropped file lands in place; an
    overlapping one, which no label map can hold, is refused by name."""
    from isegformer.evaluation.samples import volume_samples
    from isegformer.finetune.data import slices_from_volume

    path, volume, truth = slicer_made_file(tmp_path, data_dir, BRAIN, crop=True, overlap=False)
    expected = truth[0] * 1 + truth[1] * 2
    image = data_dir / BRAIN
    np.testing.assert_array_equal(read_label_map(path, volume).array, expected)

    rc = main(["evaluate-propagation", str(image), str(path), "--method", "interpolation", "--num-slices", "2",
               "--no-montage", "--out", str(tmp_path / "eval")])
    assert rc == 0, capsys.readouterr().err
    (case,) = json.loads((tmp_path / "eval" / "results.json").read_text())["cases"]
    present = np.flatnonzero(expected.any(axis=(1, 2)))
    assert case["object_extent"] == [int(present[0]), int(present[-1])]

    samples = list(volume_samples(image, path, 0))
    indices = sorted(set(np.flatnonzero(expected.any(axis=(1, 2)))))
    assert len(samples) == sum(len(set(np.unique(expected[i])) - {0}) for i in indices)
    for sample in samples:
        index, value = sample.name.split(":axis0:")[1].split("#")
        np.testing.assert_array_equal(sample.gt, expected[int(index)] == int(value))

    training = slices_from_volume(image, path, axis=0, slices="all", min_area=1)
    assert len(training) == len(indices)
    for item, index in zip(training, indices):
        np.testing.assert_array_equal(item.label, expected[index])

    overlapping, _, _ = slicer_made_file(tmp_path, data_dir, BRAIN, crop=False, overlap=True)
    with pytest.raises(InvalidInputError, match="'femur' and 'cartilage' overlap"):
        read_label_map(overlapping, volume)
    rc = main(["evaluate-propagation", str(image), str(overlapping), "--method", "interpolation",
               "--no-montage", "--out", str(tmp_path / "eval2")])
    assert rc == 1 and "overlap" in capsys.readouterr().err


# ------------------------------------------------------------------------------ .mrk.json
def slicer_read_markups(scene, path: Path):
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node = storage.AddNewMarkupsNodeFromFile(str(path), "")
    assert node is not None, f"Slicer could not read {path}"
    return node


def control_points(node):
    points = []
    for n in range(node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(n, position)
        points.append((tuple(position), node.GetNthControlPointLabel(n), node.GetNthControlPointDescription(n)))
    return points


def slicer_write_markups(scene, node, path: Path) -> Path:
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"Slicer could not write {path}"
    return path


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_slicer_reads_our_clicks_with_their_signs(tmp_path, system):
    clicks = [ClickPoint((10.5, -20.25, 3.0), True, "femur", 0), ClickPoint((-1.0, 2.0, -3.5), False, "femur", 0),
              ClickPoint((0.0, 7.0, 1.0), True, "tibia", 2)]
    path = write_clicks(tmp_path / "clicks.mrk.json", clicks, coordinate_system=system)
    node = slicer_read_markups(slicer.vtkMRMLScene(), path)
    assert node.IsA("vtkMRMLMarkupsFiducialNode")
    points = control_points(node)
    assert len(points) == 3
    for (position, label, description), click in zip(points, clicks):
        np.testing.assert_allclose(position, click.position_ras, atol=1e-9)  # Slicer's RAS
        assert description == ("positive" if click.positive else "negative")
        assert label == ("pos" if click.positive else "neg") + label[3:]
    assert all(node.GetNthControlPointPositionStatus(n) == node.PositionDefined for n in range(3))


def test_we_read_slicers_clicks_signs_from_their_descriptions(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    node.SetName("negative clicks")  # Slicer does not write this name into the file
    placed = [((1.5, -2.25, 3.0), "positive"), ((4.0, 5.0, 6.0), "negative"), ((7.0, 8.0, 9.5), "")]
    for position, description in placed:
        n = node.AddControlPoint(vtk.vtkVector3d(*position), "")
        node.SetNthControlPointDescription(n, description)
    path = slicer_write_markups(scene, node, tmp_path / "femur_positive.mrk.json")
    markup = json.loads(path.read_text())["markups"][0]
    assert "name" not in markup and markup["coordinateSystem"] == "LPS"
    clicks = read_clicks(path)
    np.testing.assert_allclose([c.position_ras for c in clicks], [p for p, _ in placed], atol=1e-9)
    # the third point has no description: the file's name (Slicer's list name on load) decides
    assert [c.positive for c in clicks] == [True, False, True]
    renamed = tmp_path / "background_neg.mrk.json"
    renamed.write_bytes(path.read_bytes())
    assert [c.positive for c in read_clicks(renamed)] == [True, False, False]


def test_clicks_saved_again_by_slicer_under_another_name_keep_their_signs(tmp_path):
    clicks = [ClickPoint((1.0, 2.0, 3.0), False, "femur", 1), ClickPoint((4.0, 5.0, 6.0), True, "femur", 1)]
    ours = write_clicks(tmp_path / "clicks.mrk.json", clicks, name="iSegFormer clicks")
    scene = slicer.vtkMRMLScene()
    node = slicer_read_markups(scene, ours)
    node.SetName("neg")
    again = slicer_write_markups(scene, node, tmp_path / "negative.mrk.json")
    back = read_clicks(again)
    assert [c.positive for c in back] == [False, True]
    np.testing.assert_allclose([c.position_ras for c in back], [c.position_ras for c in clicks], atol=1e-9)
    # Slicer keeps the description but drops the package's own per-point object
    assert [(c.segment, c.axis) for c in back] == [(None, None), (None, None)]


# --------------------------------------------------------------------------------- volumes
def write_oblique_nrrd(tmp_path: Path, left_handed: bool) -> Path:
    angle = np.deg2rad(30.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    direction = rotation @ np.diag([1.0, 1.0, -1.0 if left_handed else 1.0])
    image = sitk.GetImageFromArray(np.random.default_rng(5).integers(-100, 900, (7, 11, 13)).astype(np.int16))
    image.SetSpacing((0.8, 1.1, 3.0))
    image.SetOrigin((-5.0, 17.5, 40.25))
    image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / f"oblique_{'left' if left_handed else 'right'}.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def same_voxels(slicer_array, slicer_matrix, ours: Volume, samples: int = 3000) -> None:
    """Every compared voxel has the same value at the same RAS point in both loaders."""
    rng = np.random.default_rng(0)
    shape = np.array(slicer_array.shape)
    corners = np.array([[a, b, c] for a in (0, shape[0] - 1) for b in (0, shape[1] - 1) for c in (0, shape[2] - 1)])
    picks = np.concatenate([corners, rng.integers(0, shape, (samples, 3))])
    k, j, i = picks.T
    ras = slicer_matrix @ np.stack([i, j, k, np.ones_like(i)]).astype(float)
    target = np.linalg.inv(ours.ijk_to_ras) @ ras
    rounded = np.rint(target[:3]).astype(int)
    assert np.abs(target[:3] - rounded).max() < 1e-3
    x, y, z = rounded
    np.testing.assert_array_equal(ours.array[z, y, x], slicer_array[k, j, i])


@pytest.mark.data
@pytest.mark.parametrize("source", [
    BRAIN, "brats/pat0001/Flair_subtrMeanDivStd.nii.gz", "oaizib_label/9092628_label.nii.gz",
    "knee_template/CLAIR-Knee-103R_template_64x128x128.nii.gz", KNEE_DICOM,
    "oblique right-handed", "oblique left-handed", SYNTHETIC_DICOM,
])
def test_slicers_volume_storage_node_and_our_loader_give_the_same_voxels_in_space(tmp_path, data_dir, source):
    if source.startswith("oblique"):
        path = write_oblique_nrrd(tmp_path, left_handed="left" in source)
    elif source == SYNTHETIC_DICOM:
        from dicom_testkit import write_dicom_series

        path = tmp_path / "series"
        write_dicom_series(path, np.random.default_rng(4).integers(0, 999, (9, 12, 10)), spacing=(0.5, 0.6, 1.5))
    else:
        path = data_dir / source
    ours = read_volume(path)
    node = slicer_load_volume(slicer.vtkMRMLScene(), path)
    theirs = np.array(slicer.util.arrayFromVolume(node))
    matrix = node_ijk_to_ras(node)
    assert theirs.shape == ours.shape
    if np.linalg.det(ours.ijk_to_ras[:3, :3]) > 0:
        np.testing.assert_allclose(matrix, ours.ijk_to_ras, atol=1e-4)  # the same grid, as is
        np.testing.assert_array_equal(theirs, ours.array)
    else:  # Slicer reverses K (ForceRightHandedIJKCoordinateSystem); the voxels stay where they are
        assert np.linalg.det(matrix[:3, :3]) > 0
        np.testing.assert_allclose(matrix[:3, 2], -ours.ijk_to_ras[:3, 2], atol=1e-4)
        np.testing.assert_array_equal(theirs[::-1], ours.array)
    same_voxels(theirs, matrix, ours)


def test_a_dicom_series_with_a_missing_slice_loads_evenly_spaced_in_slicers_storage_node_and_is_refused_here(tmp_path):
    """Slicer's volume storage node (ITK underneath) invents an even 1.65 mm spacing for 11 of
    12 slices 1.5 mm apart; only Slicer's DICOM module, absent from slicer-core, checks positions."""
    from dicom_testkit import write_dicom_series

    files = write_dicom_series(tmp_path / "series", np.zeros((12, 8, 8), np.int16), spacing=(0.5, 0.5, 1.5))
    files[5].unlink()
    node = slicer_load_volume(slicer.vtkMRMLScene(), tmp_path / "series")
    assert node.GetImageData().GetDimensions()[2] == 11
    assert node.GetSpacing()[2] == pytest.approx(1.65, abs=1e-6)
    with pytest.raises(FileFormatError, match="not evenly spaced"):
        read_volume(tmp_path / "series")
