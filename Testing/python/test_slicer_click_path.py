"""The user's main path on Slicer's own code: a point placed in a slice view becomes that slice.

Red, Yellow and Green views are real Slicer slice views rendered offscreen (slicer_offscreen.py:
slice logic, displayable managers, Slicer's interactor style and markups widgets). Points are
placed with simulated mouse events in Place mode; the module's own widget observers receive
Slicer's markups events and drive its Logic, which runs the real click network (the golden tiny
checkpoint) on torch's CPU. Volumes come from ../shared/data through Slicer's volume storage node.

What a slice should hold is computed here without the module: the clicked pixel goes through
the slice node's XY-to-RAS and the volume's RAS-to-IJK, and an ``isegformer.Session`` on the
same voxels makes the same clicks at those IJK points.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import slicer_standins

if not slicer_standins.available():
    pytest.skip(slicer_standins.SKIP_REASON, allow_module_level=True)

import slicer_offscreen  # noqa: E402  (after the skip: it imports Slicer's wheel)

KNEE = "knee_template/CLAIR-Knee-103R_template_64x128x128.nii.gz"  # (k, j, i) = (128, 128, 64), RAS-aligned
LEFT_HANDED = "radiomics_brain/brain1_image.nrrd"  # Slicer flips its K axis on reading
VIEW_SIZE = 256
#: the axis (0 = k, 1 = j, 2 = i) each view looks along on the knee, whose IJK axes are R, A, S
KNEE_AXIS = {"Red": 0, "Yellow": 2, "Green": 1}


# ---- helpers ----------------------------------------------------------------------------------


def matrix(vtkMatrix):
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_world(volume):
    """The volume's IJK-to-world matrix, its parent transform applied (read from MRML here)."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    result = matrix(ijk_to_ras)
    parent = volume.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        result = matrix(to_world) @ result
    return result


def pixel_ijk(view, volume, x, y):
    """The continuous (i, j, k) under pixel (x, y) of a view: XY-to-RAS, then world-to-IJK."""
    ras = matrix(view.sliceNode.GetXYToRAS()) @ [x, y, 0.0, 1.0]
    return (np.linalg.inv(ijk_to_world(volume)) @ ras)[:3]


def slice_index(ijk, axis):
    return int(round(float(ijk[2 - axis])))


def point_world(node, index):
    position = [0.0, 0.0, 0.0]
    node.GetNthControlPointPositionWorld(index, position)
    return np.array(position)


def segment_array(slicer, segmentation, segment_id, volume):
    """A segment on the volume's grid, exported by Slicer's own segmentations logic."""
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume).astype(bool)


class Reference:
    """What a slice must hold after given clicks: a session of the package alone, on Slicer's
    voxels and IJK-to-world matrix of the volume, clicked at the IJK points computed here."""

    def __init__(self, golden_dir):
        self._checkpoint = str(golden_dir / "tiny_isegformer.pth")
        self._sessions = {}

    def slice(self, volume, axis, clicks):
        """The slice's mask after ``clicks`` [(ijk, positive), ...], made from scratch in order."""
        import slicer

        from isegformer import Session

        session = self._sessions.get(volume.GetID())
        if session is None:
            voxels = slicer.util.arrayFromVolume(volume).copy()
            session = Session.open((voxels, ijk_to_world(volume)), click_model=self._checkpoint, device="cpu")
            self._sessions[volume.GetID()] = session
        if session.segments:
            session.clear_slice(axis, slice_index(clicks[0][0], axis))
        mask = None
        for ijk, positive in clicks:
            mask = session.click_ijk(ijk, positive=positive, axis=axis)
        return mask


def take(array, axis, index):
    return np.take(array, index, axis=axis)


def others(array, axis, index):
    return np.delete(array, index, axis=axis)


def poll_until_idle(widget, timeout=120.0):
    """What the widget's poll timer does in the application, until the worker is idle."""
    deadline = time.monotonic() + timeout
    while widget.logic.isBusy():
        assert time.monotonic() < deadline, "the module's worker did not finish"
        time.sleep(0.01)
        widget.onPoll()
    widget.onPoll()


# ---- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def views(slicer_env):
    """The Red, Yellow and Green views on the test's scene, sharing its module logics."""
    result = slicer_offscreen.SliceViews(slicer_env.scene, VIEW_SIZE, VIEW_SIZE,
                                         applicationLogic=slicer_env.app.applicationLogic())
    yield result
    result.close()


@pytest.fixture
def knee(slicer_env, data_dir, views):
    volume = slicer_env.slicer.util.loadVolume(str(data_dir / KNEE))
    views.showVolume(volume)
    return volume


@pytest.fixture
def reference(golden_dir):
    return Reference(golden_dir)


@pytest.fixture
def module_widget(slicer_env, golden_dir, tmp_path, monkeypatch):
    """The module's widget as Slicer builds it, entered, using the tiny checkpoint on the CPU.

    Nothing is stubbed: the dependency check, the worker thread, the session and the network
    are the module's own. An empty weights cache keeps registry models out of reach.
    """
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "isegformer-home"))
    widget = slicer_standins.build_module_widget(slicer_env.module.iSegFormerSlicerWidget)
    slicer_standins.enter_module(widget)
    ui = widget.ui
    ui.deviceComboBox.currentText = "cpu"
    ui.propagationComboBox.currentText = "interpolation"
    ui.checkpointPathLineEdit.currentPath = str(golden_dir / "tiny_isegformer.pth")
    yield widget
    slicer_standins.exit_module(widget)
    widget.cleanup()


def start_clicking(widget, volume, negative=False):
    """Choose the source volume and press the place button (positive, or negative)."""
    ui = widget.ui
    ui.inputVolumeSelector.setCurrentNode(volume)
    assert not widget.logic.missingDependencies(), widget.logic.missingDependencies()
    if negative != ui.negativeModeCheckBox.checked:
        ui.negativeModeCheckBox.click()
    place = ui.negativePlaceWidget if negative else ui.positivePlaceWidget
    place.setPlaceModeEnabled(True)
    assert place.placeModeEnabled


def current_segment(widget):
    ui = widget.ui
    return ui.segmentEditorWidget.segmentationNode(), ui.segmentEditorWidget.currentSegmentID()


# ---- Slicer's views themselves ------------------------------------------------------------------


@pytest.mark.parametrize("view_name, tilt", [("Red", 0.0), ("Yellow", 0.0), ("Green", 0.0), ("Yellow", 30.0)])
def test_a_click_in_place_mode_puts_the_point_at_the_pixels_xy_to_ras(slicer_env, views, knee, view_name, tilt):
    view = views[view_name]
    if tilt:
        view.rotateAboutInPlaneAxis(tilt)
    points = slicer_env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    points.CreateDefaultDisplayNodes()
    views.placeInto(points)
    for x, y in ((100, 140), (37, 201)):
        view.click(x, y)
        assert np.allclose(point_world(points, points.GetNumberOfControlPoints() - 1), view.xyToRas(x, y), atol=1e-9)
    assert points.GetNumberOfControlPoints() == 2


def test_slicer_fires_the_markups_events_the_module_observes(slicer_env, views, knee):
    import slicer
    import vtk

    points = slicer_env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    points.CreateDefaultDisplayNodes()
    markups = slicer.vtkMRMLMarkupsNode
    names = ("PointAddedEvent", "PointModifiedEvent", "PointPositionDefinedEvent", "PointStartInteractionEvent",
             "PointEndInteractionEvent", "PointPositionUndefinedEvent", "PointRemovedEvent")
    seen = []
    for name in names:
        points.AddObserver(getattr(markups, name), lambda caller, event, name=name: seen.append(name))
    call_data = []

    @vtk.calldata_type(vtk.VTK_INT)
    def defined(caller, event, index):
        call_data.append(index)

    points.AddObserver(markups.PointPositionDefinedEvent, defined)
    red = views["Red"]
    views.placeInto(points)
    red.mouseMove(120, 120)
    assert seen == ["PointAddedEvent", "PointModifiedEvent"]  # the preview point follows the mouse
    assert points.GetNthControlPointPositionStatus(0) == markups.PositionPreview
    red.press(120, 120)
    assert "PointPositionDefinedEvent" not in seen
    red.release(120, 120)
    assert seen[-2:] == ["PointModifiedEvent", "PointPositionDefinedEvent"] and call_data == [0]

    views.stopPlacing()
    del seen[:]
    red.drag((120, 120), (140, 100))
    assert seen[0] == "PointStartInteractionEvent" and seen[-1] == "PointEndInteractionEvent"
    assert set(seen[1:-1]) == {"PointModifiedEvent"} and len(seen) > 3

    del seen[:]
    red.pressKey(140, 100, "Delete")
    assert seen == ["PointPositionUndefinedEvent", "PointRemovedEvent"]
    assert points.GetNumberOfControlPoints() == 0


def test_the_views_show_the_volume_the_segment_and_the_point(slicer_env, views, knee):
    slicer = slicer_env.slicer
    red = views["Red"]
    empty = red.capture()
    assert empty.std() > 10  # the knee's slice, not a blank view
    segmentation = slicer_env.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(knee)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "blue", [0.0, 0.0, 1.0])
    ijk = pixel_ijk(red, knee, 60, 60)
    mask = np.zeros(slicer.util.arrayFromVolume(knee).shape, np.uint8)
    k, j, i = slice_index(ijk, 0), int(round(ijk[1])), int(round(ijk[0]))
    mask[k, j - 10:j + 10, i - 10:i + 10] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, knee)
    with_segment = red.capture()
    row = VIEW_SIZE - 1 - 60  # capture rows run top-down, VTK's y bottom-up
    before, after = empty[row, 60].astype(int), with_segment[row, 60].astype(int)
    assert after[2] > before[2] + 20 and after[0] <= before[0]  # tinted blue
    assert (with_segment[:20, :20] == empty[:20, :20]).all()  # far from the segment: unchanged

    points = slicer_env.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    points.CreateDefaultDisplayNodes()
    points.GetDisplayNode().SetSelectedColor(0.0, 1.0, 0.0)
    views.placeInto(points)
    red.click(180, 200)
    views.stopPlacing()  # no preview point under the mouse any more
    with_point = red.capture()
    row = VIEW_SIZE - 1 - 200
    pixel = with_point[row, 180].astype(int)
    assert pixel[1] > 150 and pixel[0] < 100 and pixel[2] < 100  # the point's green glyph
    assert (with_point[:20, :20] == empty[:20, :20]).all()


# ---- the module's click path ----------------------------------------------------------------------

@pytest.mark.golden
def test_each_views_click_writes_that_slice_of_that_segment_only(slicer_env, views, knee, module_widget, reference):
    slicer, widget = slicer_env.slicer, module_widget
    start_clicking(widget, knee)
    for view_name, (x, y) in (("Red", (110, 130)), ("Yellow", (120, 140)), ("Green", (130, 120))):
        segmentation, segment_id = current_segment(widget)
        before = None if segmentation is None else segment_array(slicer, segmentation, segment_id, knee)
        view = views[view_name]
        view.click(x, y)
        poll_until_idle(widget)
        segmentation, segment_id = current_segment(widget)
        positive, _negative = widget.logic.getClickNodes()
        assert np.allclose(point_world(positive, positive.GetNumberOfControlPoints() - 1), view.xyToRas(x, y))
        axis = KNEE_AXIS[view_name]
        ijk = pixel_ijk(view, knee, x, y)
        index = slice_index(ijk, axis)
        after = segment_array(slicer, segmentation, segment_id, knee)
        expected = reference.slice(knee, axis, [(ijk, True)])
        assert expected.any() and np.array_equal(take(after, axis, index), expected), view_name
        if before is not None:
            assert np.array_equal(others(after, axis, index), others(before, axis, index)), view_name
        else:
            assert not others(after, axis, index).any()
        assert widget.ui.statusLabel.text == ""


@pytest.mark.golden
def test_a_negative_point_removes_what_it_is_placed_on(slicer_env, views, knee, module_widget, reference):
    slicer, widget, red = slicer_env.slicer, module_widget, views["Red"]
    start_clicking(widget, knee)
    red.click(110, 130)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    first = pixel_ijk(red, knee, 110, 130)
    index = slice_index(first, 0)
    before = take(segment_array(slicer, segmentation, segment_id, knee), 0, index)

    def under(ijk):
        return int(round(ijk[1])), int(round(ijk[0]))

    # The tiny test model is untrained: not every negative point clears its own pixel. Place it
    # where, for the package alone, it does (a spot of the mask, chosen before the module acts).
    for x, y in ((130, 110), (90, 150), (120, 100), (100, 120), (140, 140)):
        second = pixel_ijk(red, knee, x, y)
        expected = reference.slice(knee, 0, [(first, True), (second, False)])
        if before[under(second)] and not expected[under(second)]:
            break
    else:
        pytest.fail("no spot of the first mask where the tiny model's negative point clears it")
    assert not np.array_equal(expected, reference.slice(knee, 0, [(first, True), (second, True)]))  # the sign matters

    start_clicking(widget, knee, negative=True)
    red.click(x, y)
    poll_until_idle(widget)
    _positive, negative = widget.logic.getClickNodes()
    assert negative.GetNumberOfControlPoints() == 1
    assert negative.GetNthControlPointDescription(0) == "negative"
    after = take(segment_array(slicer, segmentation, segment_id, knee), 0, index)
    assert np.array_equal(after, expected)
    assert not after[under(second)]


@pytest.mark.golden
def test_dragging_a_point_recomputes_its_slice_from_where_it_was_dropped(slicer_env, views, knee, module_widget,
                                                                          reference):
    slicer, widget, red = slicer_env.slicer, module_widget, views["Red"]
    start_clicking(widget, knee)
    red.click(110, 130)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    index = slice_index(pixel_ijk(red, knee, 110, 130), 0)
    placed = segment_array(slicer, segmentation, segment_id, knee)

    widget.ui.positivePlaceWidget.setPlaceModeEnabled(False)  # moving points is done outside Place mode
    red.drag((110, 130), (80, 90))
    poll_until_idle(widget)
    positive, _negative = widget.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 1
    assert np.allclose(point_world(positive, 0), red.xyToRas(80, 90), atol=1e-6)
    moved = segment_array(slicer, segmentation, segment_id, knee)
    expected = reference.slice(knee, 0, [(pixel_ijk(red, knee, 80, 90), True)])
    assert not np.array_equal(take(placed, 0, index), expected)  # the drag must change something
    assert np.array_equal(take(moved, 0, index), expected)
    assert np.array_equal(others(moved, 0, index), others(placed, 0, index))
    assert "slice %d along k" % index in widget.ui.axisInfoLabel.text


@pytest.mark.golden
def test_deleting_a_point_recomputes_its_slice_from_the_points_left(slicer_env, views, knee, module_widget, reference):
    slicer, widget, green = slicer_env.slicer, module_widget, views["Green"]
    start_clicking(widget, knee)
    green.click(100, 120)
    green.click(150, 140)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    first, second = pixel_ijk(green, knee, 100, 120), pixel_ijk(green, knee, 150, 140)
    index = slice_index(first, 1)
    assert slice_index(second, 1) == index
    both = segment_array(slicer, segmentation, segment_id, knee)
    assert np.array_equal(take(both, 1, index), reference.slice(knee, 1, [(first, True), (second, True)]))

    widget.ui.positivePlaceWidget.setPlaceModeEnabled(False)
    green.pressKey(150, 140, "Delete")  # what "Delete point" does, through Slicer's markups widget
    poll_until_idle(widget)
    positive, _negative = widget.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 1
    assert np.allclose(point_world(positive, 0), green.xyToRas(100, 120))
    left = segment_array(slicer, segmentation, segment_id, knee)
    expected = reference.slice(knee, 1, [(first, True)])
    assert not np.array_equal(take(both, 1, index), expected)
    assert np.array_equal(take(left, 1, index), expected)
    assert np.array_equal(others(left, 1, index), others(both, 1, index))


@pytest.mark.golden
def test_undo_takes_back_the_last_point_and_its_effect(slicer_env, views, knee, module_widget, reference):
    slicer, widget, yellow = slicer_env.slicer, module_widget, views["Yellow"]
    start_clicking(widget, knee)
    yellow.click(100, 120)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    one = segment_array(slicer, segmentation, segment_id, knee)
    yellow.click(140, 100)
    poll_until_idle(widget)
    two = segment_array(slicer, segmentation, segment_id, knee)
    assert not np.array_equal(one, two)

    widget.ui.undoClickButton.click()
    poll_until_idle(widget)
    positive, _negative = widget.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == 1
    assert np.allclose(point_world(positive, 0), yellow.xyToRas(100, 120))
    assert np.array_equal(segment_array(slicer, segmentation, segment_id, knee), one)
    first = pixel_ijk(yellow, knee, 100, 120)
    assert np.array_equal(take(one, 2, slice_index(first, 2)), reference.slice(knee, 2, [(first, True)]))


@pytest.mark.golden
def test_points_placed_while_the_model_is_busy_are_all_handled_in_order(slicer_env, views, knee, module_widget,
                                                                         reference):
    slicer, widget = slicer_env.slicer, module_widget
    start_clicking(widget, knee)
    gate = threading.Event()
    widget.logic.submit(lambda progress: gate.wait(60), label="busy")  # the model is busy meanwhile
    red = views["Red"]
    first_offset = red.sliceLogic.GetSliceOffset()
    placed = []  # (slice offset, x, y): two points on one slice, then one on a slice further up
    for offset, x, y in ((first_offset, 110, 130), (first_offset, 140, 110), (first_offset + 7.0, 120, 120)):
        red.sliceLogic.SetSliceOffset(offset)  # the user scrolls meanwhile
        red.click(x, y)
        placed.append((pixel_ijk(red, knee, x, y), True))
    segmentation, segment_id = current_segment(widget)
    assert widget.logic.isBusy()
    assert not segment_array(slicer, segmentation, segment_id, knee).any()  # nothing applied yet
    positive, _negative = widget.logic.getClickNodes()
    assert positive.GetNumberOfControlPoints() == len(placed)
    gate.set()
    poll_until_idle(widget)

    written = segment_array(slicer, segmentation, segment_id, knee)
    lower, upper = placed[:2], placed[2:]
    assert slice_index(lower[0][0], 0) == slice_index(lower[1][0], 0) != slice_index(upper[0][0], 0)
    in_order = reference.slice(knee, 0, lower)
    assert not np.array_equal(in_order, reference.slice(knee, 0, lower[::-1]))  # the order matters here
    assert np.array_equal(written[slice_index(lower[0][0], 0)], in_order)
    assert np.array_equal(written[slice_index(upper[0][0], 0)], reference.slice(knee, 0, upper))
    assert np.flatnonzero(written.any(axis=(1, 2))).size == 2
    assert widget.ui.statusLabel.text == ""


def _assert_refused(slicer, widget, view, volume, x, y, segmentation, before):
    """A click in ``view`` at (x, y) is refused with the module's message and changes nothing."""
    positive, _negative = widget.logic.getClickNodes()
    count = positive.GetNumberOfControlPoints()
    records = widget.logic.hasClicks()
    view.click(x, y)
    poll_until_idle(widget)
    message = widget.ui.statusLabel.text
    assert view.name in message and "oblique" in message, message
    assert positive.GetNumberOfControlPoints() == count and widget.logic.hasClicks() == records
    for segment_id, array in before.items():
        assert np.array_equal(segment_array(slicer, segmentation, segment_id, volume), array)


@pytest.mark.golden
def test_a_view_tilted_off_the_volumes_axes_is_refused_and_nothing_changes(slicer_env, views, knee, module_widget):
    slicer, widget = slicer_env.slicer, module_widget
    start_clicking(widget, knee)
    views["Red"].click(110, 130)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    other = segmentation.GetSegmentation().AddEmptySegment("", "other", [1.0, 1.0, 0.0])
    box = np.zeros(slicer.util.arrayFromVolume(knee).shape, np.uint8)
    box[30:90, 40:90, 10:50] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(box, segmentation, other, knee)
    widget.ui.segmentEditorWidget.setCurrentSegmentID(segment_id)
    before = {sid: segment_array(slicer, segmentation, sid, knee) for sid in (segment_id, other)}
    assert before[segment_id].any() and before[other].any()
    yellow = views["Yellow"]
    yellow.rotateAboutInPlaneAxis(30.0)
    _assert_refused(slicer, widget, yellow, knee, 120, 140, segmentation, before)


def turned(degrees_about_s, degrees_about_r, shift):
    """A rigid 4x4: about S, then about R, then shifted (mm)."""
    def rotation(axis, degrees):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        result = np.eye(4)
        a, b = [(1, 2), (0, 2), (0, 1)][axis]
        result[a, a], result[a, b], result[b, a], result[b, b] = c, -s, s, c
        return result

    result = rotation(0, degrees_about_r) @ rotation(2, degrees_about_s)
    result[:3, 3] = shift
    return result


@pytest.fixture
def turned_knee(slicer_env, data_dir, views):
    """The knee under a parent linear transform (30 degrees about S, 20 about R, shifted); the
    views turned to its axes, as the view's "Rotate to volume plane" does."""
    slicer = slicer_env.slicer
    volume = slicer.util.loadVolume(str(data_dir / KNEE))
    transform = slicer_env.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "turn")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(turned(30.0, 20.0, (12.0, -7.0, 25.0))))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    views.showVolume(volume, rotateToVolumePlane=True)
    return volume


@pytest.mark.golden
def test_under_a_parent_transform_each_views_click_writes_its_slice(slicer_env, views, turned_knee, module_widget,
                                                                     reference):
    slicer, widget = slicer_env.slicer, module_widget
    start_clicking(widget, turned_knee)
    directions = ijk_to_world(turned_knee)[:3, :3]
    for view_name, (x, y) in (("Red", (110, 130)), ("Yellow", (120, 140)), ("Green", (130, 120))):
        view = views[view_name]
        normal = matrix(view.sliceNode.GetSliceToRAS())[:3, 2]
        axis = int(np.argmax(np.abs(normal @ directions) / np.linalg.norm(directions, axis=0)))
        axis = 2 - axis  # IJK column i, j, k -> array axis 2, 1, 0
        segmentation, segment_id = current_segment(widget)
        before = None if segmentation is None else segment_array(slicer, segmentation, segment_id, turned_knee)
        view.click(x, y)
        poll_until_idle(widget)
        assert widget.ui.statusLabel.text == "", widget.ui.statusLabel.text
        segmentation, segment_id = current_segment(widget)
        assert segmentation.GetParentTransformNode() is turned_knee.GetParentTransformNode()
        ijk = pixel_ijk(view, turned_knee, x, y)
        index = slice_index(ijk, axis)
        after = segment_array(slicer, segmentation, segment_id, turned_knee)
        expected = reference.slice(turned_knee, axis, [(ijk, True)])
        assert expected.any() and np.array_equal(take(after, axis, index), expected), view_name
        if before is not None:
            assert np.array_equal(others(after, axis, index), others(before, axis, index)), view_name


@pytest.mark.golden
def test_under_a_parent_transform_a_view_on_the_world_axes_is_refused(slicer_env, views, turned_knee, module_widget):
    slicer, widget = slicer_env.slicer, module_widget
    start_clicking(widget, turned_knee)
    views["Red"].click(110, 130)
    poll_until_idle(widget)
    segmentation, segment_id = current_segment(widget)
    before = {segment_id: segment_array(slicer, segmentation, segment_id, turned_knee)}
    assert before[segment_id].any()
    green = views["Green"]
    green.sliceNode.SetOrientation("Coronal")  # back on the patient axes: 30 degrees off the volume's
    _assert_refused(slicer, widget, green, turned_knee, 130, 120, segmentation, before)


@pytest.mark.golden
def test_a_left_handed_volume_gets_the_slice_that_was_clicked(slicer_env, data_dir, views, module_widget, reference):
    """Slicer's storage node reads this file with its K axis flipped (ForceRightHandedIJK...)."""
    slicer, widget = slicer_env.slicer, module_widget
    import SimpleITK as sitk

    path = data_dir / LEFT_HANDED
    on_disk = sitk.ReadImage(str(path))
    direction = np.array(on_disk.GetDirection()).reshape(3, 3) * on_disk.GetSpacing()
    assert np.linalg.det(direction) < 0  # the file is left-handed
    volume = slicer.util.loadVolume(str(path))
    world = ijk_to_world(volume)
    assert np.linalg.det(world[:3, :3]) > 0  # Slicer made it right-handed
    voxels = slicer.util.arrayFromVolume(volume)
    assert np.array_equal(voxels, sitk.GetArrayFromImage(on_disk)[::-1])  # by reversing k
    views.showVolume(volume)
    start_clicking(widget, volume)
    red = views["Red"]
    x, y = 140, 150
    red.click(x, y)
    poll_until_idle(widget)
    assert widget.ui.statusLabel.text == "", widget.ui.statusLabel.text
    segmentation, segment_id = current_segment(widget)
    ijk = pixel_ijk(red, volume, x, y)
    index = slice_index(ijk, 0)
    written = segment_array(slicer, segmentation, segment_id, volume)
    assert np.flatnonzero(written.any(axis=(1, 2))).tolist() == [index]
    assert np.array_equal(written[index], reference.slice(volume, 0, [(ijk, True)]))
    # the written slice is the one the Red view shows: its plane passes through that slice's voxels
    centre = world @ [0.0, 0.0, index, 1.0]
    normal = matrix(red.sliceNode.GetSliceToRAS())[:3, 2]
    assert abs(float(normal @ (centre[:3] - red.xyToRas(x, y)))) < 0.5 * np.linalg.norm(world[:3, 2])


def test_the_segment_editors_own_undo_of_a_propagation_leaves_no_empty_hand_edits(slicer_env, views, knee,
                                                                                  module_widget):
    """The editor's Undo button restores voxels without the module knowing, unless the module
    follows it: the next Propagate must fill the slices again, not keep them empty as edits."""
    slicer, widget, yellow = slicer_env.slicer, module_widget, views["Yellow"]
    start_clicking(widget, knee)
    yellow.click(100, 120)
    poll_until_idle(widget)
    first = pixel_ijk(yellow, knee, 100, 120)
    second = first.copy()
    second[0] += 6  # six slices further along the Yellow view's axis (i)
    widget.logic.addClick((ijk_to_world(knee) @ [*second, 1.0])[:3], axis=2)
    segmentation, segment_id = current_segment(widget)
    widget.logic.propagate()
    propagated = segment_array(slicer, segmentation, segment_id, knee)
    low, high = slice_index(first, 2), slice_index(second, 2)
    between = [i for i in range(low + 1, high) if take(propagated, 2, i).any()]
    assert between, "the propagation fills the slices between the two points"

    slicer.util.findChild(widget.ui.segmentEditorWidget, "UndoButton").click()
    assert not any(take(segment_array(slicer, segmentation, segment_id, knee), 2, i).any() for i in between)
    widget.logic.propagate()
    assert np.array_equal(segment_array(slicer, segmentation, segment_id, knee), propagated)
    assert not widget.logic._handEdited.get((segment_id, 2))
