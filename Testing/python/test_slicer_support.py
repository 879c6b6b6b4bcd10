"""The Slicer module's MRML-free logic: view axes, RAS->IJK, slice writing, worker, dependencies."""
from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from isegformer.errors import CancelledError, InvalidInputError, ISegFormerError
from isegformer.slicer_support import dependencies
from isegformer.slicer_support.slice_write import (
    EditRules,
    MaskMode,
    OverwriteMode,
    apply_slice_changes,
    compose_slice,
    write_slice,
)
from isegformer.slicer_support.transforms import ijk_to_world, slice_point, world_to_ijk
from isegformer.slicer_support.views import ObliqueViewError, axis_for_view
from isegformer.slicer_support.worker import Done, Progress, Worker

# Slicer's default slice orientations (vtkMRMLSliceNode presets, patient right on screen left):
# columns are the view's x, y and normal in RAS.
AXIAL = np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], float)  # normal +S
SAGITTAL = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)  # normal -R (L)
CORONAL = np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float)  # normal +A
VIEWS = {"axial": (AXIAL, 2, +1), "sagittal": (SAGITTAL, 0, -1), "coronal": (CORONAL, 1, +1)}


def slice_to_ras(rotation: np.ndarray, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = offset
    return matrix


def volume_matrix(permutation, flips, spacing=(0.7, 0.8, 1.5), origin=(10.0, -20.0, 5.0)):
    """IJK->RAS where IJK column c points along world axis permutation[c] with sign flips[c]."""
    matrix = np.eye(4)
    matrix[:3, :3] = 0.0
    for column, (world_axis, flip, step) in enumerate(zip(permutation, flips, spacing)):
        matrix[world_axis, column] = flip * step
    matrix[:3, 3] = origin
    return matrix


def rotation(axis: int, degrees: float) -> np.ndarray:
    """4x4 rotation about world axis 0 (R), 1 (A) or 2 (S)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(4)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


# ---- views ---------------------------------------------------------------------------------


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, -1, 1), (1, -1, -1), (-1, 1, -1)])
@pytest.mark.parametrize("view", sorted(VIEWS))
def test_view_axis_follows_volume_directions(permutation, flips, view):
    rot, world_axis, normal_sign = VIEWS[view]
    ijk = volume_matrix(permutation, flips)
    result = axis_for_view(slice_to_ras(rot, (3.0, 4.0, 5.0)), ijk)
    column = permutation.index(world_axis)  # IJK column (0=i, 1=j, 2=k) along the normal
    assert result.axis == 2 - column  # array axes are (k, j, i)
    assert result.sign == normal_sign * flips[column]
    assert result.angle_degrees == pytest.approx(0.0, abs=1e-9)


def test_lps_stored_volume_maps_the_three_views_to_the_three_array_axes():
    ijk = np.diag([-0.5, -0.5, 2.0, 1.0])  # typical DICOM/NIfTI read: i->L... stored as -R, -A, +S
    axes = {name: axis_for_view(slice_to_ras(rot), ijk) for name, (rot, _, _) in VIEWS.items()}
    assert (axes["axial"].axis, axes["axial"].sign) == (0, +1)
    assert (axes["coronal"].axis, axes["coronal"].sign) == (1, -1)
    assert (axes["sagittal"].axis, axes["sagittal"].sign) == (2, +1)


def test_small_rotation_is_accepted_and_large_rotation_is_refused():
    ijk = volume_matrix((0, 1, 2), (1, 1, 1))
    tilted = rotation(0, 0.5) @ slice_to_ras(AXIAL)
    assert axis_for_view(tilted, ijk).axis == 0
    oblique = rotation(0, 20.0) @ slice_to_ras(AXIAL)
    with pytest.raises(ObliqueViewError) as info:
        axis_for_view(oblique, ijk, view_name="Red")
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ISegFormerError)
    assert "Red" in str(info.value) and "Rotate to volume plane" in str(info.value)
    assert "20.0" in str(info.value)
    # a looser tolerance accepts the same view
    assert axis_for_view(oblique, ijk, tolerance_degrees=25).axis == 0


def test_tilted_volume_needs_a_view_rotated_with_it():
    tilt = rotation(1, 30.0)
    ijk = tilt @ volume_matrix((0, 1, 2), (1, 1, 1))
    with pytest.raises(ObliqueViewError):
        axis_for_view(slice_to_ras(AXIAL), ijk)
    rotated_view = tilt @ slice_to_ras(AXIAL)  # what "Rotate to volume plane" gives
    assert axis_for_view(rotated_view, ijk).axis == 0


def test_parent_transform_changes_which_axis_a_view_sees():
    local = volume_matrix((0, 1, 2), (1, 1, 1))  # i=R, j=A, k=S
    turn = rotation(2, 90.0)  # about S: R -> A, A -> -R
    world = ijk_to_world(local, [turn])
    assert axis_for_view(slice_to_ras(AXIAL), world).axis == 0  # S unchanged: still k
    sagittal = axis_for_view(slice_to_ras(SAGITTAL), world)  # normal -R: now along j (A -> -R)
    assert (sagittal.axis, sagittal.sign) == (1, +1)
    coronal = axis_for_view(slice_to_ras(CORONAL), world)  # normal +A: now along i (R -> A)
    assert (coronal.axis, coronal.sign) == (2, +1)


def test_bad_matrices_are_refused_with_input_errors():
    with pytest.raises(InvalidInputError):
        axis_for_view(np.eye(3), np.eye(4))
    with pytest.raises(InvalidInputError):
        axis_for_view(np.eye(4), np.diag([1.0, 0.0, 1.0, 1.0]))


# ---- transforms ----------------------------------------------------------------------------


def test_ijk_to_world_composes_nearest_parent_first():
    local = volume_matrix((2, 0, 1), (-1, 1, -1))
    first, second = rotation(0, 30) @ np.diag([1, 1, 1, 1.0]), np.eye(4)
    second[:3, 3] = (5, -7, 11)
    np.testing.assert_allclose(ijk_to_world(local, [first, second]), second @ first @ local)
    np.testing.assert_allclose(ijk_to_world(local), local)


def test_world_to_ijk_inverts_the_transform_chain():
    local = volume_matrix((1, 2, 0), (1, -1, 1), spacing=(0.36, 0.36, 0.7))
    chain = [rotation(2, 12.0), rotation(0, -40.0)]
    chain[1][:3, 3] = (1.5, 2.5, -3.0)
    world = ijk_to_world(local, chain)
    ijk = np.array([3.25, 17.0, 8.5])
    point = (chain[1] @ chain[0] @ local @ np.append(ijk, 1.0))[:3]
    np.testing.assert_allclose(world_to_ijk(point, world), ijk, atol=1e-9)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_point_gives_index_row_col_for_each_axis(axis):
    shape = (20, 30, 40)  # (k, j, i)
    local = volume_matrix((0, 1, 2), (-1, -1, 1))
    chain = [rotation(1, 25.0)]
    world = ijk_to_world(local, chain)
    i, j, k = 12.2, 7.6, 4.4
    point = (world @ np.array([i, j, k, 1.0]))[:3]
    result = slice_point(point, world, axis, shape)
    expected = {0: (4, j, i), 1: (8, k, i), 2: (12, k, j)}[axis]
    assert result.axis == axis and result.index == expected[0]
    assert result.row == pytest.approx(expected[1]) and result.col == pytest.approx(expected[2])
    assert result.pixel == (round(expected[1]), round(expected[2]))


def test_points_within_a_view_plane_share_the_slice_index():
    shape = (60, 64, 64)
    local = volume_matrix((1, 2, 0), (1, -1, -1), spacing=(0.5, 0.5, 1.2))
    world = ijk_to_world(local, [rotation(2, 90.0)])
    view = slice_to_ras(CORONAL)
    axis = axis_for_view(view, world).axis
    centre = (world @ np.array([30.0, 30.0, 30.0, 1.0]))[:3]
    indices = set()
    for dx, dy in [(0, 0), (5, 0), (0, 5), (-4, 3)]:
        point = centre + dx * view[:3, 0] + dy * view[:3, 1]
        indices.add(slice_point(point, world, axis, shape).index)
    assert len(indices) == 1
    moved = centre + 3 * world[:3, :3] @ np.eye(3)[2 - axis]  # 3 voxels along the view's axis
    assert abs(slice_point(moved, world, axis, shape).index - indices.pop()) == 3


def test_slice_index_rounds_half_up_and_outside_points_are_refused():
    world = np.eye(4)
    assert slice_point((0.0, 0.0, 2.5), world, 0, (5, 5, 5)).index == 3
    assert slice_point((0.0, 0.0, 2.49), world, 0, (5, 5, 5)).index == 2
    with pytest.raises(InvalidInputError, match="outside the volume"):
        slice_point((0.0, 0.0, 7.0), world, 0, (5, 5, 5))
    with pytest.raises(InvalidInputError, match="outside the volume"):
        slice_point((9.0, 0.0, 1.0), world, 0, (5, 5, 5))


# ---- slice writing -------------------------------------------------------------------------


def grid(rows: str) -> np.ndarray:
    """'01 10' -> [[0, 1], [1, 0]] as uint8."""
    return np.array([[int(c) for c in row] for row in rows.split()], dtype=np.uint8)


SLICES = {
    "target": grid("1100 1100 0000 0000"),
    "bone": grid("0110 0110 0110 0000"),
    "hidden": grid("0000 0011 0011 0000"),
}
NEW = grid("0000 0111 0111 0111")


def expect(changes, name, rows):
    assert name in changes, f"{name} should have changed"
    np.testing.assert_array_equal(changes[name], grid(rows))


def test_everywhere_without_overwrite_changes_only_the_target():
    changes = compose_slice(NEW, "target", SLICES, EditRules())
    assert set(changes) == {"target"}
    expect(changes, "target", "0000 0111 0111 0111")


def test_overwrite_all_erases_every_other_segment_under_the_new_mask():
    rules = EditRules(overwrite_mode=OverwriteMode.ALL_SEGMENTS, visible_segments=frozenset({"target", "bone"}))
    changes = compose_slice(NEW, "target", SLICES, rules)
    expect(changes, "bone", "0110 0000 0000 0000")
    expect(changes, "hidden", "0000 0000 0000 0000")


def test_overwrite_visible_keeps_hidden_segments():
    rules = EditRules(overwrite_mode=OverwriteMode.VISIBLE_SEGMENTS, visible_segments=frozenset({"target", "bone"}))
    changes = compose_slice(NEW, "target", SLICES, rules)
    expect(changes, "bone", "0110 0000 0000 0000")
    assert "hidden" not in changes


def test_inside_all_segments_includes_the_target_itself():
    changes = compose_slice(NEW, "target", SLICES, EditRules(mask_mode=MaskMode.INSIDE_ALL_SEGMENTS))
    # editable = union of all = 1110 1111 0111 0000: new there, old elsewhere
    expect(changes, "target", "0000 0111 0111 0000")


def test_inside_visible_segments_uses_only_visible_ones():
    rules = EditRules(mask_mode=MaskMode.INSIDE_VISIBLE_SEGMENTS, visible_segments=frozenset({"target", "bone"}))
    changes = compose_slice(NEW, "target", SLICES, rules)
    # editable = target | bone = 1110 1110 0110 0000
    expect(changes, "target", "0000 0110 0110 0000")


def test_outside_all_segments_excludes_the_target():
    changes = compose_slice(NEW, "target", SLICES, EditRules(mask_mode=MaskMode.OUTSIDE_ALL_SEGMENTS))
    # locked = bone | hidden = 0110 0111 0111 0000 (the target's own pixels stay editable)
    expect(changes, "target", "0100 0100 0000 0111")


def test_outside_visible_segments_lets_the_target_grow_into_hidden_ones():
    rules = EditRules(mask_mode=MaskMode.OUTSIDE_VISIBLE_SEGMENTS, visible_segments=frozenset({"target", "bone"}))
    changes = compose_slice(NEW, "target", SLICES, rules)
    # locked = bone = 0110 0110 0110 0000
    expect(changes, "target", "0100 0101 0001 0111")


def test_inside_one_segment():
    rules = EditRules(mask_mode=MaskMode.INSIDE_SEGMENT, mask_segment="hidden")
    changes = compose_slice(NEW, "target", SLICES, rules)
    expect(changes, "target", "1100 1111 0011 0000")
    with pytest.raises(InvalidInputError, match="no mask segment"):
        compose_slice(NEW, "target", SLICES, EditRules(mask_mode=MaskMode.INSIDE_SEGMENT))
    with pytest.raises(InvalidInputError, match="does not exist"):
        compose_slice(NEW, "target", SLICES, EditRules(mask_mode=MaskMode.INSIDE_SEGMENT, mask_segment="x"))


def test_intensity_range_is_inclusive_and_combines_with_overwrite():
    source = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]], float)
    rules = EditRules(intensity_range=(6, 10), overwrite_mode=OverwriteMode.ALL_SEGMENTS)
    changes = compose_slice(NEW, "target", SLICES, rules, source_slice=source)
    # editable = 6..10 = 0000 0011 1110 0000
    expect(changes, "target", "1100 1111 0110 0000")
    expect(changes, "bone", "0010 0000 0000 0000")  # erased where the target now is
    with pytest.raises(InvalidInputError, match="no source image"):
        compose_slice(NEW, "target", SLICES, EditRules(intensity_range=(0, 1)))


def test_nothing_changes_when_the_mask_equals_the_segment():
    assert compose_slice(SLICES["target"], "target", SLICES, EditRules(overwrite_mode=OverwriteMode.NONE)) == {}


def test_shape_and_name_errors_are_input_errors():
    with pytest.raises(InvalidInputError, match="shape"):
        compose_slice(np.zeros((3, 3)), "target", SLICES)
    with pytest.raises(InvalidInputError, match="not among"):
        compose_slice(NEW, "nope", SLICES)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_write_slice_touches_one_slice_only_and_does_not_mutate_inputs(axis):
    rng = np.random.default_rng(axis)
    segments = {name: (rng.random((5, 6, 7)) > 0.5).astype(np.uint8) for name in ("a", "b")}
    before = {name: arr.copy() for name, arr in segments.items()}
    index = 2
    shape2d = tuple(n for a, n in enumerate((5, 6, 7)) if a != axis)
    mask = np.ones(shape2d, np.uint8)
    changes = write_slice(mask, "a", segments, axis, index, EditRules(overwrite_mode=OverwriteMode.ALL_SEGMENTS))
    for name in segments:
        np.testing.assert_array_equal(segments[name], before[name])
    apply_slice_changes(segments, axis, index, changes)
    other = [i for i in range(segments["a"].shape[axis]) if i != index]
    for name in segments:
        np.testing.assert_array_equal(np.take(segments[name], other, axis), np.take(before[name], other, axis))
    assert np.take(segments["a"], index, axis).all()
    assert not np.take(segments["b"], index, axis).any()


# ---- worker --------------------------------------------------------------------------------


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.shutdown()


def test_jobs_run_in_order_on_one_other_thread_and_none_is_lost(worker):
    gate = threading.Event()
    seen, threads = [], set()

    def job(n):
        def run(progress):
            if n == 0:
                assert gate.wait(5)
            seen.append(n)
            threads.add(threading.get_ident())
            return n * n

        return run

    ids = [worker.submit(job(n), label=f"click {n}") for n in range(30)]
    assert worker.busy and worker.pending_count == 30  # queued while the first one blocks
    gate.set()
    events = worker.wait(timeout=10)
    done = [e for e in events if isinstance(e, Done)]
    assert [e.job_id for e in done] == ids
    assert [e.value for e in done] == [n * n for n in range(30)]
    assert seen == list(range(30))
    assert threads and threading.get_ident() not in threads and len(threads) == 1
    assert not worker.busy


def test_exceptions_are_delivered_and_the_worker_keeps_going(worker):
    def boom(progress):
        raise InvalidInputError("bad click")

    first = worker.submit(boom, label="bad")
    second = worker.submit(lambda progress: "fine")
    done = {e.job_id: e for e in worker.wait(timeout=10) if isinstance(e, Done)}
    assert not done[first].ok and isinstance(done[first].error, InvalidInputError)
    assert "bad click" in done[first].traceback
    assert done[second].ok and done[second].value == "fine"


def test_progress_events_and_cancel_of_a_running_job(worker):
    started = threading.Event()

    def long_job(progress):
        for step in range(1000):
            progress(step, 1000, "propagating")
            started.set()
            time.sleep(0.002)
        return "finished"

    job_id = worker.submit(long_job, label="propagate")
    assert started.wait(5)
    worker.cancel(job_id)
    events = worker.wait(job_id, timeout=10)
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and done[0].cancelled and done[0].value is None
    steps = [e.done for e in events if isinstance(e, Progress)]
    assert steps and steps == sorted(steps) and steps[-1] < 999


def test_cancel_of_a_queued_job_skips_it(worker):
    gate = threading.Event()
    ran = []
    blocker = worker.submit(lambda progress: gate.wait(5))
    queued = worker.submit(lambda progress: ran.append("queued"))
    worker.cancel(queued)
    gate.set()
    done = {e.job_id: e for e in worker.wait(timeout=10) if isinstance(e, Done)}
    assert done[blocker].ok and done[queued].cancelled and ran == []


def test_poll_does_not_block_and_shutdown_refuses_new_jobs():
    w = Worker()
    assert w.poll() == []
    w.shutdown()
    with pytest.raises(ISegFormerError, match="shut down"):
        w.submit(lambda progress: None)


# ---- dependencies --------------------------------------------------------------------------


def test_version_ranges_have_floors_and_major_caps():
    req = dependencies.Requirement("timm", "0.9", "2")
    assert req.specifier == "timm>=0.9,<2"
    assert dependencies.satisfies("1.0.3", req) and dependencies.satisfies("0.9.16", req)
    assert not dependencies.satisfies("0.6.13", req) and not dependencies.satisfies("2.0.0", req)
    assert dependencies.satisfies("2.3.1+cu121", dependencies.TORCH)
    for requirement in (dependencies.TORCH, *dependencies.PIP_REQUIREMENTS):
        assert "==" not in requirement.specifier and "<" in requirement.specifier


def test_unmet_lists_missing_and_out_of_range_packages():
    from importlib import metadata

    versions = {"timm": "0.6.0", "tqdm": "4.66.1"}

    def lookup(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    reqs = [dependencies.Requirement("timm", "0.9", "2"), dependencies.Requirement("tqdm", "4.60", "5"),
            dependencies.Requirement("SimpleITK", "2.2", "3")]
    problems = dependencies.unmet(reqs, lookup)
    assert [(r.name, v) for r, v in problems] == [("timm", "0.6.0"), ("SimpleITK", None)]
    text = dependencies.describe(problems)
    assert "timm>=0.9,<2 (version 0.6.0 installed)" in text and "not installed" in text


# ---- session bridge ------------------------------------------------------------------------

from isegformer.slicer_support.session_bridge import ClickSpec, SessionBridge  # noqa: E402
from isegformer.slicer_support.transforms import SlicePoint  # noqa: E402
from session_fakes import FakeSession  # noqa: E402


def test_bridge_opens_the_session_with_the_volume_and_options():
    seen = {}

    def factory(volume, **options):
        seen["volume"], seen["options"] = volume, options
        return FakeSession(volume[0].shape)

    bridge = SessionBridge.open(np.ones((6, 8, 10)), np.eye(4), click_model="m.pth", device="cpu",
                                stcn_weights="stcn.pth", session_factory=factory)
    assert seen["volume"][0].shape == (6, 8, 10) and seen["volume"][1].shape == (4, 4)
    assert seen["options"] == {"click_model": "m.pth", "device": "cpu", "stcn_weights": "stcn.pth"}
    assert bridge.volume_shape == (6, 8, 10)
    with pytest.raises(InvalidInputError):
        SessionBridge.open(np.ones((6, 8)), np.eye(4), click_model="m.pth", session_factory=factory)
    SessionBridge.open(np.ones((6, 8, 10)), np.eye(4), click_model="m.pth", device="cpu",
                       click_precision="int8", session_factory=factory)
    assert seen["options"] == {"click_model": "m.pth", "device": "cpu", "click_precision": "int8"}


@pytest.mark.golden
def test_bridge_int8_runs_the_real_fast_cpu_mode_and_a_gpu_session_stays_float32(golden_dir, monkeypatch):
    from isegformer.click_engine import predictor as predictor_module

    model = str(golden_dir / "tiny_isegformer.pth")
    bridge = SessionBridge.open(np.zeros((4, 32, 40), np.float32), np.eye(4), click_model=model,
                                device="cpu", click_precision="int8")
    assert bridge.session.predictor.precision == "int8"
    seen = {}

    def factory(volume, **options):
        seen.update(options)
        return FakeSession(volume[0].shape)

    # a CUDA session with the box still ticked: float32 there (int8 would be refused on a GPU)
    monkeypatch.setattr("isegformer.device.resolve_device", lambda device: predictor_module.torch.device("cuda"))
    SessionBridge.open(np.ones((6, 8, 10)), np.eye(4), click_model=model, device="cuda",
                       click_precision="int8", session_factory=factory)
    assert "click_precision" not in seen and seen["device"] == "cuda"


def test_bridge_click_creates_the_segment_and_returns_the_slice_mask():
    session = FakeSession()
    bridge = SessionBridge(session)
    update = bridge.click("seg1", SlicePoint(axis=1, index=3, row=2.0, col=4.0), positive=True)
    assert [s.name for s in session.segments] == ["seg1"]
    assert (update.segment, update.axis, update.index) == ("seg1", 1, 3)
    assert update.mask.shape == (6, 10) and update.mask[2, 4] and update.mask.sum() == 9


def test_bridge_undo_uses_the_session_undo_when_the_click_was_the_last_action():
    session = FakeSession()
    bridge = SessionBridge(session)
    first = bridge.click("s", SlicePoint(0, 2, 2.0, 2.0), True)
    bridge.click("s", SlicePoint(0, 2, 5.0, 7.0), True)
    update = bridge.undo_click("s", 0, 2, [ClickSpec(2.0, 2.0, True)])
    assert ("undo",) in session.calls and not any(c[0] == "clear" for c in session.calls)
    np.testing.assert_array_equal(update.mask, first.mask)


def test_bridge_undo_replays_when_another_action_came_after_the_click():
    session = FakeSession()
    bridge = SessionBridge(session)
    first = bridge.click("s", SlicePoint(0, 2, 2.0, 2.0), True)
    bridge.click("s", SlicePoint(0, 2, 5.0, 7.0), True)
    bridge.click("s", SlicePoint(2, 9, 5.0, 1.0), True)  # a later click on a slice not crossing it
    update = bridge.undo_click("s", 0, 2, [ClickSpec(2.0, 2.0, True)])
    assert ("undo",) not in session.calls and ("clear", 0, 2) in session.calls
    np.testing.assert_array_equal(update.mask, first.mask)
    assert session.labels[-1].startswith("replay clicks on slice 2 (axis 0)")  # one undoable action


def test_bridge_replay_with_no_click_left_empties_the_slice():
    session = FakeSession()
    bridge = SessionBridge(session)
    bridge.click("s", SlicePoint(0, 1, 3.0, 3.0), True)
    update = bridge.replay("s", 0, 1, [])
    assert not update.mask.any()


def test_bridge_adopts_hand_edited_slices_as_annotations():
    session = FakeSession()
    bridge = SessionBridge(session)
    bridge.click("s", SlicePoint(0, 1, 3.0, 3.0), True)
    written = session.segment_mask("s")
    current = written.copy()
    current[4, 0:2, 0:2] = True  # painted in Slicer on slice 4
    assert bridge.adopt_edits("s", 0, current, written) == [4]
    assert ("set", 0, 4) in session.calls
    np.testing.assert_array_equal(session.segment_mask("s")[4], current[4])


def test_bridge_propagation_returns_the_whole_mask_and_annotated_slices():
    session = FakeSession()
    bridge = SessionBridge(session)
    bridge.click("s", SlicePoint(0, 1, 3.0, 3.0), True)
    bridge.click("s", SlicePoint(0, 4, 3.0, 3.0), True)
    steps = []
    update = bridge.propagate("s", axis=0, method="interpolation", progress=lambda d, t, m: steps.append(d))
    assert update.mask.shape == (6, 8, 10) and update.axis == 0 and update.annotated == (1, 4)
    assert all(update.mask[i].any() for i in range(6)) and steps == [1]
    assert ("propagate", "interpolation", 0) in session.calls


def test_bridge_warm_up_uses_the_sessions_own_warm_up_and_changes_no_state():
    session = FakeSession()
    warmed = []
    session.warm_up_click_model = lambda background=True: warmed.append(background)
    bridge = SessionBridge(session)
    bridge.warm_up()
    assert warmed == [False]  # on the worker thread it blocks, so a failure is that job's error
    assert session.calls == [] and session.labels == [] and not session.annotations


def test_bridge_refuses_masks_of_the_wrong_shape():
    session = FakeSession()
    session.click_slice = lambda *args, **kwargs: np.zeros((3, 3), bool)
    with pytest.raises(InvalidInputError, match="shape"):
        SessionBridge(session).click("s", SlicePoint(0, 1, 1.0, 1.0), True)


@pytest.mark.slow
@pytest.mark.golden
def test_bridge_drives_the_real_session_with_the_tiny_checkpoint(golden_dir):
    """The contract the fake follows, checked against isegformer.session (about a minute on CPU)."""
    rng = np.random.default_rng(0)
    volume = np.zeros((10, 40, 48), np.float32)
    volume[2:8, 10:30, 12:36] = 100
    volume += rng.normal(0, 5, volume.shape).astype(np.float32)
    bridge = SessionBridge.open(volume, np.diag([0.8, 0.8, 2.0, 1.0]),
                                click_model=str(golden_dir / "tiny_isegformer.pth"), device="cpu")
    first = bridge.click("s", SlicePoint(0, 3, 20.0, 24.0), True)
    second = bridge.click("s", SlicePoint(0, 3, 5.0, 5.0), False)
    assert first.mask.shape == second.mask.shape == (40, 48)
    undone = bridge.undo_click("s", 0, 3, [ClickSpec(20.0, 24.0, True)])
    np.testing.assert_array_equal(undone.mask, first.mask)
    bridge.click("s", SlicePoint(0, 6, 20.0, 24.0), True)
    update = bridge.propagate("s", axis=0, method="interpolation")
    assert update.annotated == (3, 6) and update.mask.shape == volume.shape
    np.testing.assert_array_equal(update.mask[3], first.mask)
