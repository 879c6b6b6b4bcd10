"""Hostile checkpoints: damaged records, non-finite weights, malformed or bomb pickles, bad shapes.

Every file here is refused with the package's CheckpointError (never AssertionError,
RecursionError, ZeroDivisionError or a crash), and before it can allocate much memory.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from isegformer.checkpoint import load_checkpoint
from isegformer.click_engine.build import build_isegformer, load_click_model
from isegformer.errors import CheckpointError
from isegformer.propagation.stcn.weights import load_fusion
from isegformer.propagation.stcn.fusion import FusionNet

LOGIC = Path(__file__).resolve().parents[2] / "Logic"


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return build_isegformer("tiny").state_dict()


def _saved(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """A copy of a torch zip with some records' content replaced (CRCs stay valid)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            data = replace.get(info.filename.split("/", 1)[1], None)
            new.writestr(info.filename, old.read(info) if data is None else data)
    return target


def _torch_zip(target: Path, pickled: bytes, records: dict[str, bytes] | None = None,
               compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(target, "w", compression) as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", sys.byteorder)
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return target


def _data_offset(path: Path, record: str) -> int:
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(record)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


# --- item 8: the zip CRC of every record ----------------------------------------------------------

@pytest.mark.parametrize("record", ["data/0", "data.pkl"])
def test_a_flipped_byte_in_any_record_is_refused(tmp_path, record):
    path = _saved(tmp_path / "m.pth", {"state_dict": {"w": torch.arange(1000.0)}, "config": {}})
    raw = bytearray(path.read_bytes())
    prefix = zipfile.ZipFile(path).namelist()[0].split("/", 1)[0]
    offset = _data_offset(path, f"{prefix}/{record}")
    raw[offset + (100 if record == "data/0" else 40)] ^= 0x04
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(path)


def test_random_damage_anywhere_never_loads_other_weights(tmp_path):
    """Seeded damage to any byte of a zip checkpoint: refused, or loaded with exactly the saved
    tensors (a damaged timestamp or comment changes nothing), never a raw exception."""
    torch.manual_seed(8)
    saved = collections.OrderedDict(a=torch.randn(20, 5), b=torch.arange(7), c=torch.randn(3).half())
    source = _saved(tmp_path / "good.pth", {"state_dict": saved, "config": {"x": [1, (2, 3.5)]}})
    raw = source.read_bytes()
    rng = np.random.default_rng(8)
    outcomes = collections.Counter()
    path = tmp_path / "damaged.pth"
    for trial in range(300):
        data = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if trial % 7 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        path.write_bytes(bytes(data))
        try:
            loaded = load_checkpoint(path)["state_dict"]
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert list(loaded) == list(saved)
        assert all(torch.equal(loaded[k], saved[k]) and loaded[k].dtype == saved[k].dtype
                   for k in saved)
    assert outcomes["refused"] > 150, outcomes


def test_a_config_set_of_reference_objects_loads_as_plain_data(tmp_path):
    # set([isegm.a.B, isegm.a.C]): the placeholders become dicts, which no set can hold.
    pickled = (b"\x80\x02}(X\x06\x00\x00\x00config" + b"c__builtin__\nset\n((cisegm.a\nB\n"
               b"cisegm.a\nC\nltR" + b"u.")
    config = load_checkpoint_config(_torch_zip(tmp_path / "set.pth", pickled))
    assert sorted(d["placeholder"] for d in config) == ["isegm.a.B", "isegm.a.C"]


def load_checkpoint_config(path: Path):
    from isegformer.checkpoint import read_torch_object, _plain

    return _plain(read_torch_object(path)["config"])


# --- item 9: NaN and infinity ------------------------------------------------------------------------

def test_non_finite_weights_are_refused_by_name(tmp_path, tiny_state):
    state = {k: v.clone() for k, v in tiny_state.items()}
    state["head.fusion_conv.conv.weight"].view(-1)[3] = float("nan")
    state["backbone.patch_embed.proj.bias"][0] = float("inf")
    path = _saved(tmp_path / "nan.pth", {"state_dict": state, "config": None})
    with pytest.raises(CheckpointError, match=r"not finite.*backbone\.patch_embed\.proj\.bias \(0 "
                                              r"NaN, 1 inf\).*head\.fusion_conv\.conv\.weight \(1 NaN"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not finite"):
        load_click_model(state, device="cpu")  # a state dict given in memory is checked too


def test_non_finite_weights_given_to_the_propagation_loader(tmp_path):
    state = FusionNet().state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("-inf")
    with pytest.raises(CheckpointError, match=f"not finite.*{key}"):
        load_fusion(state)


def test_state_dicts_given_in_memory_with_odd_keys_are_checkpoint_errors(tiny_state):
    with pytest.raises(CheckpointError, match="strings"):
        load_click_model({1: torch.zeros(2), **tiny_state}, device="cpu")
    with pytest.raises(CheckpointError, match="strings"):
        load_fusion({("a", "b"): torch.zeros(2), **FusionNet().state_dict()})


# --- item 14: malformed pickles ----------------------------------------------------------------------

class _Storage:
    """Makes a pickle with a chosen persistent id, as a crafted checkpoint would."""

    def __init__(self, pid):
        self.pid = pid


def _pickle_with_ids(obj) -> bytes:
    buffer = io.BytesIO()

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            return value.pid if isinstance(value, _Storage) else None

    Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.mark.parametrize("pid", [
    42,
    ("storage",),
    ("storage", "FloatStorage", "0", "cpu"),
    ("storage", "not a type", "0", "cpu", 4),
    ("module", "x", "y"),
    ("storage", None, "../../etc/passwd", "cpu", 4),
])
def test_bad_persistent_ids_are_checkpoint_errors(tmp_path, pid):
    pickled = _pickle_with_ids({"state_dict": {"w": _Storage(pid)}})
    path = _torch_zip(tmp_path / "bad.pth", pickled, {"0": b"\0" * 16})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def _nested_lists(depth: int) -> bytes:
    # EMPTY_LIST pushed `depth` times, then APPEND folds each into the one below it.
    return b"\x80\x02}(X\x06\x00\x00\x00config" + b"]" * depth + b"a" * (depth - 1) + b"u."


def test_a_config_nested_2000_deep_is_refused(tmp_path):
    path = _torch_zip(tmp_path / "deep.pth", _nested_lists(2000))
    with pytest.raises(CheckpointError, match="deeper than"):
        load_checkpoint(path)


def test_a_self_containing_config_is_refused(tmp_path):
    cyclic = b"\x80\x02}(X\x06\x00\x00\x00config]q\x00h\x00au."  # L = []; L.append(L)
    path = _torch_zip(tmp_path / "cycle.pth", cyclic)
    with pytest.raises(CheckpointError, match="deeper than|refers to itself"):
        load_checkpoint(path)


def test_an_exponentially_shared_config_is_refused(tmp_path):
    # L0 = []; L(i+1) = [L(i), L(i)]: 60 levels are 2**60 objects to anything that walks them.
    ops = b"]q\x00"
    for level in range(1, 61):  # POP the previous level: it stays reachable through the memo
        ops += b"0(h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"lq" + bytes([level])
    path = _torch_zip(tmp_path / "dag.pth", b"\x80\x02}(X\x06\x00\x00\x00config" + ops + b"u.")
    with pytest.raises(CheckpointError, match="exceed"):
        load_checkpoint(path)


def _tuple_bomb(path: Path) -> Path:
    """A 300,000-deep tuple used as a dict key: hashing it in C overflows the stack."""
    return _torch_zip(path, b"\x80\x02}" + b")" + b"\x85" * 300_000 + b"K\x01s.")


def test_deeply_nested_tuples_are_refused_without_crashing(tmp_path):
    # Before the fix this killed the interpreter (segfault); the slow test below runs it in a
    # child process, to report that as a failure rather than crash the test run.
    with pytest.raises(CheckpointError, match="deeper than"):
        load_checkpoint(_tuple_bomb(tmp_path / "tuples.pth"))


def test_a_pickle_of_too_many_opcodes_is_refused_before_it_is_built():
    from isegformer.torch_file import MAX_PICKLE_OPS, TorchFileError, check_pickle_nesting

    busy = b"\x80\x02" + b"N0" * 5000 + b"N."  # push None, pop it: 10,000 opcodes of nothing
    check_pickle_nesting(io.BytesIO(busy), max_ops=20_000)
    with pytest.raises(TorchFileError, match="more than 1000 opcodes"):
        check_pickle_nesting(io.BytesIO(busy), max_ops=1000)
    assert MAX_PICKLE_OPS <= 5_000_000  # a scan of the limit takes seconds, not minutes


def test_random_damage_to_the_pickle_only_ever_raises_checkpoint_errors(tmp_path, tiny_state):
    """Seeded fuzzing of data.pkl with valid CRCs: whatever the bytes, the error is ours."""
    source = _saved(tmp_path / "good.pth", {"state_dict": dict(list(tiny_state.items())[:6]),
                                            "config": {"a": [1, 2, {"b": (3, 4.5)}]}})
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        pickled = archive.read(name)
    rng = np.random.default_rng(14)
    outcomes = collections.Counter()
    for trial in range(150):
        data = bytearray(pickled)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(2, len(data)))] = int(rng.integers(0, 256))
        if trial % 5 == 0:
            data = data[: int(rng.integers(2, len(data)))]
        path = _rewrite_zip(source, tmp_path / "fuzz.pth", {"data.pkl": bytes(data)})
        try:
            load_checkpoint(path)
            outcomes["loaded"] += 1
        except CheckpointError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50, outcomes


# --- item 23: bombs ---------------------------------------------------------------------------------

_MEASURE = textwrap.dedent("""
    import resource, sys, torch
    from isegformer.checkpoint import load_checkpoint
    from isegformer.errors import CheckpointError
    torch.zeros(1)
    for path in sys.argv[1:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_checkpoint(path)
            outcome = "loaded"
        except CheckpointError as err:
            outcome = f"refused: {err}"
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grew, outcome.replace(chr(10), " "), flush=True)
""")


@pytest.fixture
def allocations(monkeypatch):
    """The sizes of the tensor buffers the reader allocates."""
    import isegformer.torch_file as torch_file

    sizes: list[int] = []
    real_empty, real_untyped = torch.empty, torch.UntypedStorage

    class Spy:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def empty(*shape, **kwargs):
            sizes.append(int(np.prod(shape)) if shape else 0)
            return real_empty(*shape, **kwargs)

        @staticmethod
        def UntypedStorage(size=0, *args, **kwargs):  # noqa: N802 (torch's name)
            sizes.append(int(size))
            return real_untyped(size, *args, **kwargs)

    monkeypatch.setattr(torch_file, "torch", Spy())
    return sizes


def _float_tensor_pickle(key: str, numel: int, shape: tuple[int, ...]) -> bytes:
    class Rebuild:
        def __reduce__(self):
            stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
            return (torch._utils._rebuild_tensor_v2,
                    (_Storage(("storage", torch.FloatStorage, key, "cpu", numel)), 0, shape,
                     stride, False, collections.OrderedDict()))

    return _pickle_with_ids({"state_dict": {"w": Rebuild()}, "config": None})


def _hand_made_zip(path: Path, entries: list[tuple[str, int, int, bytes]]) -> Path:
    """A zip whose records declare what we say: (name, method, uncompressed size, raw data)."""
    local, central = bytearray(), bytearray()
    for name, method, size, data in entries:
        encoded = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, 0,
                               len(data), size, len(encoded), 0, 0, 0, 0, 0, len(local)) + encoded
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, 0, len(data), size,
                             len(encoded), 0) + encoded + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def _deflate_bomb(path: Path) -> Path:
    """1 GiB of zeros declared and deflated into a few MB (its CRC is left at 0)."""
    import zlib

    block, copies = bytes(1 << 24), 64
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    # After a full flush nothing refers back: the piece may be repeated to inflate to more zeros.
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = piece * copies + compressor.flush()
    numel = len(block) * copies // 4
    pickled = _float_tensor_pickle("0", numel, (numel,))
    return _hand_made_zip(path, [("archive/data.pkl", 0, len(pickled), pickled),
                                 ("archive/data/0", 8, len(block) * copies, stream)])


def _lying_pickle(path: Path) -> Path:
    """A pickle declaring a gigabyte of floats for a record of 16 bytes."""
    numel = (1 << 30) // 4
    return _torch_zip(path, _float_tensor_pickle("0", numel, (numel,)), {"0": b"\0" * 16})


def test_a_deflated_record_that_inflates_to_a_gigabyte_is_refused_before_reading(
        tmp_path, allocations):
    path = _deflate_bomb(tmp_path / "bomb.pth")
    assert path.stat().st_size < 8 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_checkpoint(path)
    assert max(allocations, default=0) < 1 << 20


def test_a_pickle_declaring_more_than_its_record_holds_is_refused_before_allocating(
        tmp_path, allocations):
    with pytest.raises(CheckpointError, match="declares 16 bytes, its tensor"):
        load_checkpoint(_lying_pickle(tmp_path / "liar.pth"))
    assert max(allocations, default=0) < 1 << 20


@pytest.mark.slow
def test_bombs_in_a_child_process_neither_crash_nor_grow_memory(tmp_path):
    paths = [_tuple_bomb(tmp_path / "t.pth"), _deflate_bomb(tmp_path / "d.pth"),
             _lying_pickle(tmp_path / "l.pth")]
    done = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, paths)],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                          env={"PYTHONPATH": str(LOGIC), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines:
        grew_kb, outcome = line.split(" ", 1)
        assert outcome.startswith("refused:"), outcome
        assert int(grew_kb) < 200_000, line


def test_a_tensor_larger_than_its_storage_is_refused(tmp_path):
    # A broadcast view of 10**12 elements over 4 bytes: any later .contiguous() asks 4 TB.
    class Rebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (_Storage(("storage", torch.FloatStorage, "0", "cpu", 1)), 0, (10**6, 10**6),
                     (0, 0), False, collections.OrderedDict()))

    path = _torch_zip(tmp_path / "view.pth", _pickle_with_ids({"w": Rebuild()}),
                      {"0": b"\0" * 4})
    with pytest.raises(CheckpointError, match="elements of its storage"):
        load_checkpoint(path)


def test_a_legacy_file_declaring_huge_storages_is_refused(tmp_path, tiny_state):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    # The storage's element count (4: BININT1 after the location and its BINPUT) becomes 2**31-1.
    at = raw.index(b"X\x03\x00\x00\x00cpu") + 8
    at = raw.index(b"K\x04", at, at + 8)
    path.write_bytes(raw[:at] + b"J" + struct.pack("<i", 2**31 - 1) + raw[at + 2:])
    with pytest.raises(CheckpointError, match="more than the rest of the file"):
        load_checkpoint(path)


# --- item 15: shapes of the detected architecture ----------------------------------------------------

def test_a_zero_sized_patch_embedding_is_refused_at_load(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["backbone.patch_embed.proj.weight"] = torch.zeros(0, 3, 0, 0)
    path = _saved(tmp_path / "zero.pth", {"state_dict": state, "config": None})
    with pytest.raises(CheckpointError, match="empty patch embedding"):
        load_click_model(path, device="cpu")


def test_head_counts_that_do_not_divide_the_channels_are_refused(tiny_state):
    from isegformer.click_engine.build import validate_click_config
    from isegformer.click_engine.model import ClickModelConfig

    with pytest.raises(CheckpointError, match="do not split into 3 heads"):
        validate_click_config(ClickModelConfig(embed_dim=32, depths=(2, 2), num_heads=(3, 2)))
    with pytest.raises(CheckpointError, match="click_radius"):
        validate_click_config(ClickModelConfig(embed_dim=32, depths=(2,), num_heads=(1,),
                                               click_radius=float("nan")))
    state = dict(tiny_state)  # a bias table with 0 heads: stage 0 of the tiny network
    key = "backbone.layers.0.blocks.0.attn.relative_position_bias_table"
    state[key] = torch.zeros(state[key].shape[0], 0)
    with pytest.raises(CheckpointError, match="attention heads"):
        load_click_model(state, device="cpu")


@pytest.mark.parametrize("radius", [10**400, float("nan"), -3.0, 0])
def test_an_impossible_click_radius_in_the_config_is_refused(tiny_state, radius):
    config = {"class": "isegformer.click_engine.model.ISegFormer",
              "params": {"click_radius": radius}}
    with pytest.raises(CheckpointError, match="click_radius"):
        load_click_model({"state_dict": dict(tiny_state), "config": config}, device="cpu")
