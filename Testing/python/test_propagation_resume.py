"""Issue 11, point 5 at the package level: after Session.load (or a propagator dropped to bound
memory), a propagation recomputes only around the annotations that are new or changed since
the saved result, as the session that was never saved does, and keeps every other slice.

The networks are real STCN and FusionNet modules (random weights: the masks mean nothing, the
plumbing is real); the session file is the real ``.isegsession`` written by Session.save.
"""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from isegformer.errors import InvalidInputError, SessionFileError
from isegformer.propagation.factory import create_propagator
from isegformer.session import Session, session as session_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (12, 32, 40)  # (k, j, i); slices along k
FIRST = (2, 6, 10)  # annotated before saving


def _disk(k: int, grow: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:SHAPE[1], :SHAPE[2]]
    return (yy - 16) ** 2 + (xx - 18 - k % 5) ** 2 < (6 + k % 3 + grow) ** 2


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    stack = np.stack([200.0 * _disk(k) + rng.normal(100, 20, SHAPE[1:]) for k in range(SHAPE[0])])
    return np.clip(stack, 0, None).astype(np.int16)


class Recorder:
    """A propagator factory that is the package's own, keeping every propagator it makes."""

    def __init__(self):
        self.made = []

    def __call__(self, *args, **kwargs):
        propagator = create_propagator(*args, **kwargs)
        self.made.append(propagator)
        return propagator

    @property
    def decoded(self) -> int:
        return sum(getattr(p, "frames_decoded", 0) for p in self.made)  # interpolation decodes nothing


def _open(volume, networks, recorder, fusion=True):
    network, fusion_net = networks
    return Session.open((volume, np.eye(4)), stcn_weights=network, fusion_weights=fusion_net if fusion else None,
                        propagator_factory=recorder, device="cpu")


def _load(path, networks, recorder, fusion=True):
    network, fusion_net = networks
    return Session.load(path, stcn_weights=network, fusion_weights=fusion_net if fusion else None,
                        propagator_factory=recorder, device="cpu")


@pytest.fixture(scope="module")
def saved(volume, random_stcn_networks, tmp_path_factory):
    """(the saved file, the result it holds): FIRST annotated and propagated with STCN."""
    _, _, result, path = _annotated_and_saved(volume, random_stcn_networks, tmp_path_factory.mktemp("saved"))
    return path, result


def _annotated_and_saved(volume, networks, tmp_path, fusion=True, method="stcn"):
    """(the live session, its recorder, its result, the saved file): FIRST annotated and propagated."""
    recorder = Recorder()
    session = _open(volume, networks, recorder, fusion)
    session.add_segment("blob")
    for k in FIRST:
        session.set_slice_mask(0, k, _disk(k))
    result = session.propagate(method=method)
    path = session.save(tmp_path / "work.isegsession")
    return session, recorder, result, path


def _interval(index: int, annotated) -> list[int]:
    """The slices between ``index`` and its annotated neighbours (or the ends), itself excluded."""
    lower = max([a for a in annotated if a < index] + [-1])
    upper = min([a for a in annotated if a > index] + [SHAPE[0]])
    return [t for t in range(lower + 1, upper) if t != index]


def test_a_new_annotation_after_load_recomputes_only_its_interval(volume, random_stcn_networks, tmp_path):
    live, live_recorder, before, path = _annotated_and_saved(volume, random_stcn_networks, tmp_path)
    assert live_recorder.decoded >= SHAPE[0] - len(FIRST)  # the first propagation: every other slice
    new = _disk(8, grow=2)
    decoded = live_recorder.decoded
    live.set_slice_mask(0, 8, new)
    live.propagate()
    live_cost = live_recorder.decoded - decoded

    recorder = Recorder()
    loaded = _load(path, random_stcn_networks, recorder)
    loaded.set_slice_mask(0, 8, new)
    after = loaded.propagate()
    interval = _interval(8, FIRST)
    assert interval == [7, 9]
    assert recorder.decoded == live_cost == len(interval)  # not the whole volume
    assert recorder.made[0].frames_encoded == len(FIRST) + len(interval) + 1  # memory keys, then the interval
    outside = [k for k in range(SHAPE[0]) if k not in interval and k != 8]
    np.testing.assert_array_equal(after[outside], before[outside])
    for k in FIRST:
        np.testing.assert_array_equal(after[k], _disk(k))
    np.testing.assert_array_equal(after[8], new)
    assert loaded.history.undo_labels[-1].startswith("propagate")


def test_nothing_changed_after_load_decodes_nothing_and_adds_no_undo_step(saved, random_stcn_networks):
    path, before = saved
    recorder = Recorder()
    loaded = _load(path, random_stcn_networks, recorder)
    assert not loaded.can_undo
    np.testing.assert_array_equal(loaded.propagate(), before)
    assert recorder.made == [] and recorder.decoded == 0  # no propagator needed at all
    assert not loaded.can_undo
    loaded.set_slice_mask(0, 6, _disk(6))  # drawn again, the same mask: nothing to recompute
    np.testing.assert_array_equal(loaded.propagate(), before)
    assert recorder.decoded == 0
    assert loaded.history.undo_labels[-1].startswith("set slice mask")


def test_a_removed_annotation_after_load_recomputes_everything(volume, saved, random_stcn_networks):
    recorder = Recorder()
    loaded = _load(saved[0], random_stcn_networks, recorder)
    loaded.clear_slice(0, 6)
    after = loaded.propagate()

    fresh_recorder = Recorder()
    fresh = _open(volume, random_stcn_networks, fresh_recorder)
    fresh.add_segment("blob")
    for k in (2, 10):
        fresh.set_slice_mask(0, k, _disk(k))
    expected = fresh.propagate()
    assert recorder.decoded == fresh_recorder.decoded >= SHAPE[0] - 2  # a full run, as a fresh session's
    np.testing.assert_array_equal(after, expected)


def test_a_changed_annotation_after_load_recomputes_only_its_interval(saved, random_stcn_networks):
    path, before = saved
    corrected = _disk(6, grow=3)
    recorder = Recorder()
    loaded = _load(path, random_stcn_networks, recorder)
    loaded.set_slice_mask(0, 6, corrected)
    after = loaded.propagate()
    interval = _interval(6, FIRST)
    assert interval == [3, 4, 5, 7, 8, 9]
    assert recorder.decoded == len(interval)
    outside = [k for k in range(SHAPE[0]) if k not in interval and k != 6]
    np.testing.assert_array_equal(after[outside], before[outside])
    np.testing.assert_array_equal(after[6], corrected)


def test_a_click_on_an_annotated_slice_after_load_recomputes_only_its_interval(saved, random_stcn_networks):
    from fake_click_net import FakeClickNet

    from isegformer.click_engine.predictor import ClickPredictor

    path, before = saved
    network, fusion = random_stcn_networks
    recorder = Recorder()
    loaded = Session.load(path, stcn_weights=network, fusion_weights=fusion, propagator_factory=recorder,
                          device="cpu", click_model=ClickPredictor(FakeClickNet(reach=5.0), device="cpu", zoom_in=False))
    clicked = loaded.click_slice(0, 10, 4.0, 4.0)  # a click on a drawn slice: a new click sequence
    assert not np.array_equal(clicked, _disk(10))
    after = loaded.propagate()
    assert recorder.decoded == len(_interval(10, FIRST)) == 4  # 7, 8, 9 and, to the end, 11
    np.testing.assert_array_equal(after[:7], before[:7])
    np.testing.assert_array_equal(after[10], clicked)


def test_a_dropped_propagator_is_seeded_again(volume, random_stcn_networks, monkeypatch):
    monkeypatch.setattr(session_module, "MAX_LIVE_PROPAGATORS", 1)
    recorder = Recorder()
    session = _open(volume, random_stcn_networks, recorder)
    first = session.add_segment("first")
    for k in FIRST:
        session.set_slice_mask(0, k, _disk(k), segment=first)
    before = session.propagate(first)
    session.add_segment("second")
    session.set_slice_mask(0, 5, _disk(5))
    session.propagate(method="interpolation")  # drops the first segment's propagator
    assert all(key[0] is not first for key in session._propagators)
    decoded = recorder.decoded
    session.set_slice_mask(0, 8, _disk(8, grow=2), segment=first)
    after = session.propagate(first)
    interval = _interval(8, FIRST)
    assert recorder.decoded - decoded == len(interval)
    outside = [k for k in range(SHAPE[0]) if k not in interval and k != 8]
    np.testing.assert_array_equal(after[outside], before[outside])


def test_the_record_follows_undo_and_redo(volume, random_stcn_networks, tmp_path):
    session, recorder, before, _ = _annotated_and_saved(volume, random_stcn_networks, tmp_path, method="interpolation")
    segment = session.segment("blob")
    first = segment.propagation_record
    assert (first.axis, first.method, sorted(first.by_index)) == (0, "interpolation", list(FIRST))
    session.set_slice_mask(0, 8, _disk(8, grow=2))
    session.propagate(method="interpolation")
    second = segment.propagation_record
    assert sorted(second.by_index) == [2, 6, 8, 10]
    assert second.by_index[6] == first.by_index[6] and second.by_index[8] not in first.by_index.values()
    assert session.undo().startswith("propagate")
    assert segment.propagation_record == first
    np.testing.assert_array_equal(segment.propagated, before)
    session.redo()
    assert segment.propagation_record == second
    session.undo()
    session.undo()  # the fourth annotation
    session.undo()  # the first propagation
    assert segment.propagated is None and segment.propagation_record is None
    session.redo()
    assert segment.propagation_record == first


def test_the_record_survives_save_and_load(saved, tmp_path, random_stcn_networks):
    from isegformer.propagation.network_digest import network_digest

    path, _ = saved
    loaded = Session.load(path)
    record = loaded.segment("blob").propagation_record
    assert (record.axis, record.method, sorted(record.by_index)) == (0, "stcn", list(FIRST))
    assert record.networks == network_digest(*random_stcn_networks)  # the weights it ran with
    again = loaded.save(tmp_path / "again.isegsession", include_volume=False)
    assert Session.load(again, volume=loaded.volume).segment("blob").propagation_record == record


def test_other_networks_after_load_recompute_everything(volume, saved, random_stcn_networks):
    """The record names the weights: a session loaded with another STCN (or without the
    FusionNet the result was fused with) does not take the result up; it computes what a
    session that only ever had its own weights computes."""
    import torch

    from isegformer.propagation.stcn import STCNNetwork

    path, before = saved
    torch.manual_seed(2)
    others = [(STCNNetwork().eval(), random_stcn_networks[1]), (random_stcn_networks[0], None)]
    for network, fusion in others:
        recorder = Recorder()
        loaded = Session.load(path, stcn_weights=network, fusion_weights=fusion, propagator_factory=recorder,
                              device="cpu")
        loaded.set_slice_mask(0, 8, _disk(8, grow=2))
        after = loaded.propagate()
        assert recorder.decoded >= SHAPE[0] - len(FIRST) - 1  # every slice again, not 7 and 9
        fresh = Session.open((volume, np.eye(4)), stcn_weights=network, fusion_weights=fusion, device="cpu")
        fresh.add_segment("blob")
        for k in FIRST:
            fresh.set_slice_mask(0, k, _disk(k))
        fresh.set_slice_mask(0, 8, _disk(8, grow=2))
        np.testing.assert_array_equal(after, fresh.propagate())
        assert loaded.segment("blob").propagation_record.networks != \
            Session.load(path).segment("blob").propagation_record.networks


def test_the_networks_digest_tells_weights_apart():
    import torch

    from isegformer.propagation.network_digest import network_digest
    from isegformer.segments.segment import is_mask_digest

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    copy = torch.nn.Linear(3, 2)
    copy.load_state_dict(layer.state_dict())
    digest = network_digest(layer)
    assert is_mask_digest(digest) and network_digest(copy) == digest
    with torch.no_grad():
        copy.weight[1, 2] += 1e-6
    assert network_digest(copy) != digest
    assert network_digest(layer, None) != digest != network_digest(None, layer)
    import copy as copying

    assert network_digest(copying.deepcopy(layer).double()) != digest  # same values, another dtype


def test_interpolation_after_load_gives_the_live_result(volume, random_stcn_networks, tmp_path):
    live, _, before, path = _annotated_and_saved(volume, random_stcn_networks, tmp_path, method="interpolation")
    recorder = Recorder()
    loaded = _load(path, random_stcn_networks, recorder)
    np.testing.assert_array_equal(loaded.propagate(method="interpolation"), before)
    assert recorder.made == []  # nothing changed: no propagator
    for session in (live, loaded):
        session.set_slice_mask(0, 8, _disk(8, grow=2))
    np.testing.assert_array_equal(loaded.propagate(method="interpolation"), live.propagate(method="interpolation"))


# --- the record in a session file -----------------------------------------------------------

def _entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _with_manifest(path, change):
    entries = _entries(path)
    manifest = json.loads(str(np.load(io.BytesIO(entries["manifest.npy"]))))
    change(manifest)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array(json.dumps(manifest)), allow_pickle=False)
    entries["manifest.npy"] = buffer.getvalue()
    target = path.with_name("changed.isegsession")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return target


def _record(manifest):
    return manifest["segments"][0]["propagation_record"]


@pytest.mark.parametrize("change, message", [
    (lambda m: _record(m).update(axis=1), "propagation_record.axis must be the propagation axis 0"),
    (lambda m: _record(m).update(axis="0"), "propagation_record.axis must be a whole number"),
    (lambda m: _record(m).update(method=""), "propagation_record.method must not be empty"),
    (lambda m: _record(m).update(method=7), "propagation_record.method must be text"),
    (lambda m: _record(m).update(annotations={"3": "ab"}), "propagation_record.annotations must be a list"),
    (lambda m: _record(m)["annotations"].append([12, "0" * 32]), r"annotations\[3\] index must be in 0..11"),
    (lambda m: _record(m)["annotations"].append([2, "0" * 32]), "name one slice twice"),
    (lambda m: _record(m)["annotations"][0].__setitem__(1, "XYZ"), "digest must be 32 lower-case hex digits"),
    (lambda m: _record(m)["annotations"][0].append(1), r"annotations\[0\] has 3 items, more than the 2 allowed"),
    (lambda m: _record(m)["annotations"][0].pop(), r"must be \[slice index, mask digest\]"),
    (lambda m: m["segments"][0].update(propagated=None, propagation_axis=None), "is set without a propagated result"),
    (lambda m: m["segments"][0].update(propagation_record=[0, "stcn"]), "propagation_record must be an object"),
    (lambda m: _record(m).update(networks="XYZ"), "propagation_record.networks must be 32 lower-case hex digits"),
    (lambda m: _record(m).update(networks=5), "propagation_record.networks must be 32 lower-case hex digits"),
])
def test_a_malformed_record_is_refused(saved, change, message):
    bad = _with_manifest(saved[0], change)
    with pytest.raises(SessionFileError, match=message):
        Session.load(bad)


def test_a_file_without_a_record_loads_and_propagates_everything(saved, random_stcn_networks):
    path, before = saved
    old = _with_manifest(path, lambda m: m["segments"][0].pop("propagation_record"))
    recorder = Recorder()
    loaded = _load(old, random_stcn_networks, recorder)
    segment = loaded.segment("blob")
    assert segment.propagation_record is None
    np.testing.assert_array_equal(segment.propagated, before)
    loaded.propagate()
    assert recorder.decoded >= SHAPE[0] - len(FIRST)  # everything again


def test_seeding_checks_its_input(volume, random_stcn_networks):
    from isegformer.propagation.stcn import STCNPropagator

    network, fusion = random_stcn_networks
    labels = np.stack([_disk(k) for k in range(SHAPE[0])]).astype(np.uint8)
    propagator = STCNPropagator(volume, 1, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError, match="one label map per frame"):
        propagator.seed(labels[:3], [])
    with pytest.raises(InvalidInputError, match="objects 1..1"):
        propagator.seed(labels * 2, [])
    assert propagator.seed(labels, [(3, labels[3]), (9, labels[9]), (3, labels[3])])
    assert propagator.frames_decoded == 0 and list(propagator.annotated) == [9, 3]  # a frame again: a correction
    np.testing.assert_array_equal(propagator.labels(), labels)
    with pytest.raises(InvalidInputError, match="Only a new propagator"):
        propagator.seed(labels, [])


def test_a_restored_result_with_its_record_is_taken_up(volume, saved, random_stcn_networks):
    """What the Slicer module does on reopening a session: the segment's voxels and the stored
    record go back into a new session (whose annotations were replayed), one undo step."""
    from isegformer.slicer_support.session_bridge import SessionBridge

    path, before = saved
    record = Session.load(path).segment("blob").propagation_record
    recorder = Recorder()
    session = _open(volume, random_stcn_networks, recorder)
    bridge = SessionBridge(session, has_stcn_weights=True)
    session.add_segment("blob")
    for k in FIRST:
        session.set_slice_mask(0, k, _disk(k))
    bridge.restore_propagation("blob", 0, "stcn", before, record.digests, record.networks)
    segment = session.segment("blob")
    assert segment.propagation_record == record and segment.propagation_axis == 0
    np.testing.assert_array_equal(segment.propagated, before)
    session.set_slice_mask(0, 8, _disk(8, grow=2))
    update = bridge.propagate("blob", axis=0)
    assert recorder.decoded == len(_interval(8, FIRST))
    assert (update.method, [index for index, _ in update.digests]) == ("stcn", [2, 6, 8, 10])
    assert update.networks == record.networks
    session.undo()  # the propagation
    session.undo()  # the annotation of slice 8
    assert session.undo().startswith("restore the propagated result")
    assert segment.propagated is None and segment.propagation_record is None


@pytest.mark.parametrize("result, record, message", [
    (np.zeros((3, 4, 5), bool), None, "has shape"),
    ("volume*2", None, "0/1 values only"),
    ("volume", ("axis", 3), "Axis|axis"),
    ("volume", ("method", " "), "names its method"),
    ("volume", ("networks", "XYZ"), "networks digest is empty or 32 hex digits"),
    ("volume", ("digests", ((12, "0" * 32),)), "0..11"),
    ("volume", ("digests", ((2, "z" * 32),)), "32 hex digits"),
])
def test_restoring_a_result_checks_its_input(volume, saved, result, record, message):
    from dataclasses import replace

    path, before = saved
    session = Session.load(path)
    good = session.segment("blob").propagation_record
    fresh = Session.open((volume, np.eye(4)))
    fresh.add_segment("blob")
    if isinstance(result, str):
        result = before.astype(np.uint8) * (2 if result == "volume*2" else 1)
    if record is not None:
        good = replace(good, **{record[0]: record[1]})
    with pytest.raises(InvalidInputError, match=message):
        fresh.restore_propagated("blob", result, good)
    assert fresh.segment("blob").propagated is None and not fresh.history.undo_labels[1:]
    with pytest.raises(InvalidInputError, match="PropagationRecord"):
        fresh.restore_propagated("blob", before, {"axis": 0})


def _interpolation_session(volume):
    session = Session.open((volume, np.eye(4)), device="cpu")
    session.add_segment("blob")
    for k in (2, 10):
        session.set_slice_mask(0, k, _disk(k))
    return session


def _corner():
    mask = np.zeros(SHAPE[1:], bool)
    mask[:5, :5] = True
    return mask


def test_a_restored_result_showing_a_later_annotation_forgets_it_when_that_is_cleared(volume):
    """The voxels a reopened module hands back show annotations made after the propagation.
    Clearing one must give what the session that was never reopened gives, not its old mask."""
    never = _interpolation_session(volume)
    never.propagate(method="interpolation")
    record = never.segment("blob").propagation_record
    never.set_slice_mask(0, 6, _corner())  # after the propagation: not in its record
    voxels = never.segment_mask("blob").copy()
    assert voxels[6, :5, :5].all()

    reopened = _interpolation_session(volume)
    reopened.set_slice_mask(0, 6, _corner())
    assert reopened.restore_propagated("blob", voxels, record)
    assert reopened.segment("blob").propagation_record.overlaid == (6,)
    for session in (never, reopened):
        session.clear_slice(0, 6)
    np.testing.assert_array_equal(reopened.propagate(method="interpolation"),
                                  never.propagate(method="interpolation"))
    assert not reopened.segment_mask("blob")[6, :5, :5].all()


def test_a_result_crossed_by_annotations_of_another_axis_is_not_restored(volume):
    never = _interpolation_session(volume)
    never.propagate(method="interpolation")
    record = never.segment("blob").propagation_record
    plane = np.ones((SHAPE[0], SHAPE[1]), bool)
    never.set_slice_mask(2, 3, plane)  # an i-plane: it crosses every k-slice of the voxels
    voxels = never.segment_mask("blob").copy()

    reopened = _interpolation_session(volume)
    reopened.set_slice_mask(2, 3, plane)
    steps = len(reopened.history._done)
    assert reopened.restore_propagated("blob", voxels, record) is False
    segment = reopened.segment("blob")
    assert segment.propagated is None and segment.propagation_record is None
    assert len(reopened.history._done) == steps  # nothing restored, nothing to undo
    for session in (never, reopened):
        session.clear_slice(2, 3)
    np.testing.assert_array_equal(reopened.propagate(method="interpolation", axis=0),
                                  never.propagate(method="interpolation", axis=0))


def test_the_overlaid_slices_survive_save_and_load_and_are_checked(volume, tmp_path):
    never = _interpolation_session(volume)
    never.propagate(method="interpolation")
    record = never.segment("blob").propagation_record
    never.set_slice_mask(0, 6, _corner())
    reopened = _interpolation_session(volume)
    reopened.set_slice_mask(0, 6, _corner())
    reopened.restore_propagated("blob", never.segment_mask("blob"), record)
    path = reopened.save(tmp_path / "s.isegsession")
    assert Session.load(path).segment("blob").propagation_record.overlaid == (6,)

    for bad in ([2], [6, 6], [99], ["6"]):
        changed = _with_manifest(path, lambda m: _record(m).update(overlaid=bad))
        with pytest.raises(SessionFileError, match="overlaid"):
            Session.load(changed)


def test_restoring_refuses_malformed_digest_pairs_with_the_packages_error(volume):
    from isegformer.segments.segment import PropagationRecord
    from isegformer.slicer_support.session_bridge import SessionBridge

    session = _interpolation_session(volume)
    good = "0" * 32
    for digests in (((2,),), ((2, good), (2, good)), ((2, good, 3),), 5):
        with pytest.raises(InvalidInputError):
            session.restore_propagated("blob", np.zeros(SHAPE, bool), PropagationRecord(0, "interpolation", digests))
    with pytest.raises(InvalidInputError):
        SessionBridge(session).restore_propagation("blob", 0, "interpolation", np.zeros(SHAPE, bool), [("x", good)])


@pytest.mark.parametrize("axis, method, mask, networks, message", [
    ("k", "interpolation", None, "", "An axis is 0"),
    (None, "interpolation", None, "", "An axis is 0"),
    (1.7, "interpolation", None, "", "An axis is 0"),  # never truncated to axis 1
    (0, None, None, "", "method is a name"),
    (0, "interpolation", [[[0, 1]], [[0]]], "", "not a .* mask array|has shape"),
    (0, "interpolation", "2s", "", "0/1 values only"),
    (0, "stcn", None, 5, "networks digest is text"),
    (0, "stcn", None, "XYZ", "networks digest is empty or 32 hex digits"),
])
def test_the_bridge_refuses_a_malformed_stored_record_with_the_packages_error(volume, axis, method, mask,
                                                                              networks, message):
    from isegformer.slicer_support.session_bridge import SessionBridge

    session = _interpolation_session(volume)
    if mask is None:
        mask = np.zeros(SHAPE, bool)
    elif mask == "2s":
        mask = np.full(SHAPE, 2, np.uint8)  # a label value, not a mask: never read as "everywhere"
    with pytest.raises(InvalidInputError, match=message):
        SessionBridge(session).restore_propagation("blob", axis, method, mask, [(2, "0" * 32)], networks)
    assert session.segment("blob").propagated is None


def test_weights_changed_in_place_are_other_networks(volume, random_stcn_networks, tmp_path):
    """The session keeps the networks it was given; a weight changed in place afterwards (a
    load_state_dict, a fine-tuning step) makes the saved result another networks' result."""
    import copy

    import torch

    network, fusion = (copy.deepcopy(n) for n in random_stcn_networks)
    _, _, _, path = _annotated_and_saved(volume, (network, fusion), tmp_path)
    loaded = Session.load(path, stcn_weights=network, fusion_weights=fusion, device="cpu")
    before = loaded._networks_digest("stcn")
    assert before == Session.load(path).segment("blob").propagation_record.networks
    with torch.no_grad():
        next(network.parameters()).add_(1e-3)
    assert loaded._networks_digest("stcn") != before
