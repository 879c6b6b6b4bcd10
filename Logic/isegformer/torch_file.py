"""Reading the files ``torch.save`` writes, without ``torch.load``: bounded, checked, code-free.

A checkpoint comes from outside (a download, a colleague, a shared folder), and ``torch.load``
trusts it: it never checks the zip's CRCs (a flipped byte in a tensor loads as a wrong weight),
allocates whatever size a record or the pickle declares (a 1 MB file can ask for gigabytes), and
hashes or walks nested tuples of any depth in C (a deep pickle crashes the interpreter). This
module reads both of torch's formats itself:

* the zip format (``torch.save`` since 1.6): every record read is CRC-checked by ``zipfile``;
  the declared sizes are checked against the file's size, and each tensor record's size against
  the bytes its tensor needs, before anything is allocated;
* the legacy format (a sequence of pickles followed by raw storage bytes): storages are
  allocated only within what the rest of the file can hold.

The pickle is first scanned opcode by opcode (no object is built) to bound its nesting depth,
then unpickled with :class:`RestrictedUnpickler`, which builds only tensors, storages, plain
containers and inert placeholders for the reference package's (``isegm``) config objects, and
refuses every other global before anything is called. The result is walked once more, without
recursion, to bound the depth and the number of objects that later code will traverse.

Every failure raises :class:`TorchFileError`; :mod:`isegformer.checkpoint` turns it into the
user-facing :class:`~isegformer.errors.CheckpointError`.
"""
from __future__ import annotations

import collections
import io
import pickle
import pickletools
import re
import struct
import sys
import types
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch

#: The pickle of a checkpoint holds names, shapes and a small config: a few hundred kB at most.
MAX_PICKLE_BYTES = 16 << 20
#: Opcodes of one pickle: Swin-L's training state has ~30,000; scanning 2 million takes seconds.
MAX_PICKLE_OPS = 2_000_000
#: All tensor data of one file; Swin-L's checkpoint is 0.8 GB.
MAX_STORAGE_BYTES = 16 << 30
#: torch stores records uncompressed; a recompressed file may shrink, but not by more than this.
MAX_INFLATION = 10
_INFLATION_SLACK = 1 << 20
#: Deeper than anything a checkpoint or a training state holds (about 6 levels).
MAX_DEPTH = 100
#: Objects (containers and leaves) that code walking the result may visit.
MAX_OBJECTS = 200_000
MAX_DIMS = 16
_CHUNK = 1 << 22
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_RECORD_KEY = re.compile(r"[0-9A-Za-z_.-]{1,64}")


class TorchFileError(Exception):
    """Why a file was refused. ``kind``: "refused" (a forbidden global), "damaged", "too large"."""

    def __init__(self, message: str, *, kind: str = "damaged",
                 qualified_name: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.qualified_name = qualified_name


# --- what a pickle may name ------------------------------------------------------------------------

class StorageType:
    """What ``torch.FloatStorage`` and its kin mean inside a checkpoint: a dtype, nothing else."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
_STORAGE_TYPES = {name: StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}


class InertPlaceholder:
    """Stands in for an object of the reference package; holds its pickled state, runs nothing."""

    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertPlaceholder":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "InertPlaceholder":
        return type(self)()

    def __repr__(self) -> str:
        return f"<placeholder for {self.qualified_name}>"


_placeholder_types: dict[str, type] = {}
PLACEHOLDER_MODULES = ("isegm",)  # the reference package: its config objects become inert


def placeholder_for(qualified_name: str) -> type:
    if qualified_name not in _placeholder_types:
        _placeholder_types[qualified_name] = type(
            qualified_name.rsplit(".", 1)[-1], (InertPlaceholder,), {"qualified_name": qualified_name}
        )
    return _placeholder_types[qualified_name]


def _storage_elements(storage: Any) -> int:
    return storage._untyped_storage.nbytes() // torch._utils._element_size(storage.dtype)


def _check_view(storage: Any, offset: Any, size: Any, stride: Any) -> None:
    """The tensor a pickle describes lies inside its storage and is no larger than it."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise TorchFileError(f"a tensor is built on a {type(storage).__name__}, not on a storage "
                             "of the file")
    def ints(value: Any, what: str) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS or not all(
                type(v) is int and v >= 0 for v in value):
            raise TorchFileError(f"a tensor's {what} is {value!r:.80}, not a list of at most "
                                 f"{MAX_DIMS} non-negative integers")
        return tuple(value)
    size, stride = ints(size, "shape"), ints(stride, "strides")
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise TorchFileError(f"a tensor has shape {size}, strides {stride} and offset {offset!r}, "
                             "which do not describe a tensor")
    available = _storage_elements(storage)
    numel = 1
    for s in size:
        numel *= s
    if numel == 0:
        return
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= available or numel > available:
        raise TorchFileError(
            f"a tensor of shape {list(size)} (strides {list(stride)}, offset {offset}) needs more "
            f"than the {available} elements of its storage")


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    _check_view(storage, storage_offset, size, stride)
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if backward_hooks:
        raise TorchFileError("a tensor carries backward hooks (code); checkpoints hold none",
                             kind="refused", qualified_name="backward hooks")
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    tensor.requires_grad = bool(requires_grad) and tensor.is_floating_point()
    return tensor


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    if not isinstance(data, torch.Tensor):
        raise TorchFileError(f"a parameter is built from a {type(data).__name__}, not a tensor")
    if backward_hooks:
        raise TorchFileError("a parameter carries backward hooks (code); checkpoints hold none",
                             kind="refused", qualified_name="backward hooks")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


def _parameter(data=None, requires_grad=True):
    if not isinstance(data, torch.Tensor):
        raise TorchFileError(f"a parameter is built from a {type(data).__name__}, not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


# Globals a checkpoint legitimately needs. Each of them only builds data; none runs code given
# by the file. The tensor builders check shapes against their storage first.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "Counter"): collections.Counter,  # learning-rate schedulers' milestones
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "complex"): complex,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.nn.parameter", "Parameter"): _parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "float32"): torch.float32,
    ("torch", "float16"): torch.float16,
    ("torch", "bfloat16"): torch.bfloat16,
    ("torch", "float64"): torch.float64,
    ("torch", "int64"): torch.int64,
}


StorageLoader = Callable[[tuple], Any]


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only what :data:`ALLOWED_GLOBALS` lists, placeholders and the file's storages.

    ``storages`` turns a persistent id (a tensor's storage) into a storage; without it a pickle
    that refers to one is refused.
    """

    def __init__(self, file: BinaryIO, *, storages: Optional[StorageLoader] = None) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # Python 2 era pickles (protocol 2) name builtins so
            module = "builtins"
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if module.split(".", 1)[0] in PLACEHOLDER_MODULES:
            return placeholder_for(f"{module}.{name}")
        raise TorchFileError(f"the pickle refers to {module}.{name}", kind="refused",
                             qualified_name=f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise TorchFileError(f"the pickle refers to external data ({pid!r:.60}) outside a "
                                 "torch file")
        if not isinstance(pid, tuple) or not pid:
            raise TorchFileError(f"the pickle refers to external data {pid!r:.60}, which is not "
                                 "a tensor storage")
        if pid[0] != "storage":
            raise TorchFileError(f"the pickle refers to a {pid[0]!r:.40} record; only tensor "
                                 "storages are allowed", kind="refused",
                                 qualified_name=f"persistent id {pid[0]!r:.40}")
        return self._storages(pid)


# --- bounds on the pickle ---------------------------------------------------------------------------

_ATOMS = frozenset((
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT",
    "BYTEARRAY8", "GLOBAL", "PERSID", "EXT1", "EXT2", "EXT4", "NEXT_BUFFER",
))
_FROM_MARK = frozenset(("TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"))
_EMPTY = frozenset(("EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"))
_NOTHING = frozenset(("PROTO", "FRAME", "STOP"))


class _Depth:
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value


def check_pickle_nesting(stream: BinaryIO, max_depth: int = MAX_DEPTH,
                         max_ops: int = MAX_PICKLE_OPS) -> None:
    """Refuse a pickle whose objects nest deeper than ``max_depth``, or that has more than
    ``max_ops`` opcodes (which would take long to scan and to load), before unpickling it.

    Simulates the unpickler's stack with the depth of each object instead of the object (the
    memo shares them, mutations deepen them). Immutable nestings (tuples, whose hashing in C
    recurses without a limit) are measured exactly; later mutations of containers are caught by
    :func:`check_object_graph` on the result. Leaves ``stream`` where it started.
    """
    start = stream.tell()
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop(n: int = 1) -> list[_Depth]:
        if len(stack) - (marks[-1] if marks else 0) < n:
            raise TorchFileError("the pickle is malformed (its stack underflows)")
        items = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return items

    def pop_mark() -> list[_Depth]:
        if not marks:
            raise TorchFileError("the pickle is malformed (a missing MARK)")
        at = marks.pop()
        items = stack[at:]
        del stack[at:]
        return items

    def deepest(items: list[_Depth]) -> int:
        return max((item.value for item in items), default=0)

    def push_new(depth: int) -> None:
        if depth > max_depth:
            raise TorchFileError(f"the pickle nests objects deeper than {max_depth} levels; no "
                                 "checkpoint does", kind="too large")
        stack.append(_Depth(depth))

    def deepen(target: _Depth, items: list[_Depth]) -> None:
        target.value = max(target.value, deepest(items) + 1)
        if target.value > max_depth:
            raise TorchFileError(f"the pickle nests objects deeper than {max_depth} levels; no "
                                 "checkpoint does", kind="too large")

    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(stream)):
            if count >= max_ops:
                raise TorchFileError(f"the pickle has more than {max_ops} opcodes; no checkpoint "
                                     "has", kind="too large")
            name = opcode.name
            if name in _ATOMS:
                stack.append(_Depth(0))
            elif name in _EMPTY:
                stack.append(_Depth(1))
            elif name == "MARK":
                marks.append(len(stack))
            elif name in _FROM_MARK:
                push_new(deepest(pop_mark()) + 1)
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                push_new(deepest(pop(int(name[-1]))) + 1)
            elif name == "APPEND":
                item = pop()
                target = pop()[0]
                deepen(target, item)
                stack.append(target)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                items = pop_mark()
                target = pop()[0]
                deepen(target, items)
                stack.append(target)
            elif name == "SETITEM":
                items = pop(2)
                target = pop()[0]
                deepen(target, items)
                stack.append(target)
            elif name == "BUILD":
                state = pop()
                target = pop()[0]
                deepen(target, state)
                stack.append(target)
            elif name in ("REDUCE", "NEWOBJ"):
                args = pop(2)[1]
                push_new(args.value)
            elif name == "NEWOBJ_EX":
                items = pop(3)
                push_new(max(items[1].value, items[2].value))
            elif name in ("STACK_GLOBAL", "BINPERSID", "READONLY_BUFFER"):
                pop(2 if name == "STACK_GLOBAL" else 1)
                stack.append(_Depth(0))
            elif name == "POP":
                pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(pop()[0])
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if not stack:
                    raise TorchFileError("the pickle is malformed (PUT on an empty stack)")
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                if not stack:
                    raise TorchFileError("the pickle is malformed (MEMOIZE on an empty stack)")
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if int(arg) not in memo:
                    raise TorchFileError(f"the pickle is malformed (memo entry {arg} is unset)")
                stack.append(memo[int(arg)])
            elif name in _NOTHING:
                pass
            else:
                raise TorchFileError(f"the pickle uses the opcode {name}, which no checkpoint "
                                     "needs")
    except TorchFileError:
        raise
    except Exception as err:  # pickletools' own complaints about a malformed stream
        raise TorchFileError(f"the pickle is malformed ({type(err).__name__}: {err})") from None
    finally:
        stream.seek(start)


def check_object_graph(obj: Any, max_depth: int = MAX_DEPTH, max_objects: int = MAX_OBJECTS) -> None:
    """Refuse a result that nests deeper than ``max_depth`` or whose walk visits more than
    ``max_objects`` objects (shared or cyclic references count each time), without recursion."""
    pending = [(obj, 1)]
    visited = 0
    while pending:
        value, depth = pending.pop()
        visited += 1
        if visited > max_objects:
            raise TorchFileError(f"the pickle's objects (counting shared ones each time they are "
                                 f"reached) exceed {max_objects}: it is cyclic or a bomb",
                                 kind="too large")
        if depth > max_depth:
            raise TorchFileError(f"the pickle nests objects deeper than {max_depth} levels (or "
                                 "refers to itself); no checkpoint does", kind="too large")
        if isinstance(value, dict):
            for key, item in value.items():
                pending.append((key, depth + 1))
                pending.append((item, depth + 1))
        elif isinstance(value, (list, tuple, set, frozenset)) and not isinstance(value, torch.Size):
            pending.extend((item, depth + 1) for item in value)
        elif isinstance(value, InertPlaceholder):
            pending.append((value.__dict__, depth + 1))


# --- the two file formats ---------------------------------------------------------------------------

def read_torch_file(path: str | Path) -> Any:
    """Unpickle a file written by ``torch.save`` onto the CPU, within the bounds above."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        magic = stream.read(4)
    try:
        if magic.startswith(b"PK"):
            result = _read_zip(path, size)
        else:
            with open(path, "rb") as stream:
                result = _read_legacy(stream, size)
    except TorchFileError:
        raise
    except zipfile.BadZipFile as err:
        raise TorchFileError(f"its zip archive is damaged ({err})") from None
    except MemoryError:
        raise TorchFileError("it needs more memory than this computer has", kind="too large") \
            from None
    except Exception as err:
        raise TorchFileError(f"{type(err).__name__}: {err}") from None
    check_object_graph(result)
    return result


def _bounded_load(data: BinaryIO, storages: Optional[StorageLoader]) -> Any:
    check_pickle_nesting(data)
    try:
        return RestrictedUnpickler(data, storages=storages).load()
    except TorchFileError:
        raise
    except RecursionError:
        raise TorchFileError(f"the pickle nests objects deeper than {MAX_DEPTH} levels",
                             kind="too large") from None
    except Exception as err:
        raise TorchFileError(f"the pickle is malformed ({type(err).__name__}: {err})") from None


def _typed(storage: torch.UntypedStorage, dtype: torch.dtype) -> Any:
    return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _storage_id(pid: tuple, fields: int) -> tuple[StorageType, str, int]:
    if len(pid) != fields:
        raise TorchFileError(f"a tensor storage is described by {len(pid)} fields, not {fields}")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, StorageType):
        raise TorchFileError(f"a tensor storage has the type {storage_type!r:.60}")
    if not isinstance(key, str) or not _RECORD_KEY.fullmatch(key):
        raise TorchFileError(f"a tensor storage has the key {key!r:.60}")
    if not isinstance(location, str) or type(numel) is not int or numel < 0:
        raise TorchFileError(f"a tensor storage has the location {location!r:.40} and size "
                             f"{numel!r:.40}")
    return storage_type, key, numel


def _read_zip(path: Path, file_size: int) -> Any:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise TorchFileError("its zip archive lists a record twice")
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError("its zip archive has no (single) data.pkl record: it was not "
                                 "written by torch.save")
        prefix = pickles[0][: -len("data.pkl")]
        outside = [n for n in names if not n.startswith(prefix)]
        if outside:
            raise TorchFileError(f"its zip archive holds records outside {prefix}: {outside[:3]}")
        declared = 0
        for info in infos:
            if info.flag_bits & 0x1:
                raise TorchFileError(f"the record {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise TorchFileError(f"the record {info.filename} uses compression method "
                                     f"{info.compress_type}")
            declared += info.file_size
        if declared > MAX_STORAGE_BYTES + MAX_PICKLE_BYTES:
            raise TorchFileError(f"its records declare {declared} bytes, more than the "
                                 f"{MAX_STORAGE_BYTES} bytes of tensors allowed", kind="too large")
        if declared > file_size * MAX_INFLATION + _INFLATION_SLACK:
            raise TorchFileError(
                f"its records declare {declared} bytes of content in a file of {file_size} bytes "
                f"(more than {MAX_INFLATION} times its size): a zip bomb or a damaged file",
                kind="too large")
        checked: set[str] = set()

        def read_small(name: str, limit: int) -> bytes:
            info = archive.getinfo(name)
            if info.file_size > limit:
                raise TorchFileError(f"the record {name} declares {info.file_size} bytes, more "
                                     f"than the {limit} allowed", kind="too large")
            buffer = bytearray(info.file_size)
            _read_record(archive, info, memoryview(buffer))
            checked.add(name)
            return bytes(buffer)

        if prefix + "byteorder" in names:
            order = read_small(prefix + "byteorder", 16)
            if order.decode("ascii", "replace") != sys.byteorder:
                raise TorchFileError(f"it was written on a {order!r} byte-order machine; this one "
                                     f"is {sys.byteorder}")
        loaded: dict[str, tuple[Any, torch.dtype]] = {}
        budget = [MAX_STORAGE_BYTES]

        def storage(pid: tuple) -> Any:
            storage_type, key, numel = _storage_id(pid, 5)
            dtype = storage_type.dtype
            if key in loaded:
                untyped, first_dtype = loaded[key]
                if first_dtype != dtype:
                    raise TorchFileError(f"the tensor record data/{key} is used as {first_dtype} "
                                         f"and as {dtype}")
                return _typed(untyped, dtype)
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TorchFileError(f"a tensor refers to the record data/{key}, which the file "
                                     "lacks")
            info = archive.getinfo(name)
            nbytes = numel * torch._utils._element_size(dtype)
            if info.file_size != nbytes:
                raise TorchFileError(
                    f"the record data/{key} declares {info.file_size} bytes, its tensor "
                    f"({numel} x {dtype}) needs {nbytes}")
            budget[0] -= nbytes
            if budget[0] < 0:
                raise TorchFileError(f"its tensors exceed {MAX_STORAGE_BYTES} bytes",
                                     kind="too large")
            data = torch.empty(nbytes, dtype=torch.uint8)
            _read_record(archive, info, memoryview(data.numpy()))
            checked.add(name)
            untyped = data.untyped_storage()
            loaded[key] = (untyped, dtype)
            return _typed(untyped, dtype)

        pickled = read_small(pickles[0], MAX_PICKLE_BYTES)
        result = _bounded_load(io.BytesIO(pickled), storage)
        for info in infos:  # records nobody referred to are CRC-checked too, without keeping them
            if info.filename not in checked:
                _verify_record(archive, info)
    return result


def _read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: memoryview) -> None:
    """Fill ``target`` with the record; ``zipfile`` checks the CRC when the record ends."""
    with archive.open(info) as stream:
        position = 0
        while position < len(target):
            count = stream.readinto(target[position:position + _CHUNK])
            if not count:
                raise TorchFileError(f"the record {info.filename} ends after {position} of its "
                                     f"{len(target)} bytes")
            position += count
        if stream.read(1):
            raise TorchFileError(f"the record {info.filename} is longer than it declares")


def _verify_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    with archive.open(info) as stream:
        while stream.read(_CHUNK):
            pass


def _read_legacy(stream: BinaryIO, file_size: int) -> Any:
    """The format of ``torch.save(..., _use_new_zipfile_serialization=False)``."""
    magic = _bounded_load(stream, None)
    if magic != _LEGACY_MAGIC:
        raise TorchFileError("it is a pickle, but not one written by torch.save (no torch magic "
                             "number)")
    if _bounded_load(stream, None) != _LEGACY_PROTOCOL:
        raise TorchFileError("it was written by an unknown version of torch.save")
    sys_info = _bounded_load(stream, None)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not (
            sys.byteorder == "little"):
        raise TorchFileError("it was written on a machine of another byte order")
    storages: dict[str, tuple[torch.UntypedStorage, int, int]] = {}
    budget = [0]

    def storage(pid: tuple) -> Any:
        storage_type, key, numel = _storage_id(pid, 6)
        if pid[5] is not None:
            raise TorchFileError("it holds storage views (torch < 0.4), which are not supported")
        dtype = storage_type.dtype
        if key in storages:
            return _typed(storages[key][0], dtype)
        element = torch._utils._element_size(dtype)
        budget[0] += numel * element
        # The storages' bytes follow the pickles: they cannot exceed what is left of the file.
        if budget[0] > file_size - stream.tell() or budget[0] > MAX_STORAGE_BYTES:
            raise TorchFileError(f"its tensors declare {budget[0]} bytes, more than the rest of "
                                 "the file holds (it is truncated)")
        untyped = torch.UntypedStorage(numel * element)
        storages[key] = (untyped, numel, element)
        return _typed(untyped, dtype)

    result = _bounded_load(stream, storage)
    keys = _bounded_load(stream, None)
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
        raise TorchFileError("its list of storages does not match its tensors")
    for key in keys:
        untyped, numel, element = storages[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
            raise TorchFileError(f"the data of storage {key} is truncated or of another size")
        target = memoryview(torch.empty(0, dtype=torch.uint8).set_(untyped).numpy())
        position = 0
        while position < len(target):
            count = stream.readinto(target[position:position + _CHUNK])
            if not count:
                raise TorchFileError(f"the data of storage {key} is truncated")
            position += count
    return result
