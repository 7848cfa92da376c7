"""Evaluation sets that ship inside PyPI packages, read without importing or unpickling anything.

``animal-mnist`` stores its arrays as gzip'd numpy pickles. Unpickling runs whatever callables the file
names, so a tampered wheel could execute code on every evaluation run. Instead, ``read_pickled_ndarray``
walks the opcode stream with ``pickletools.genops`` (a parser, it calls nothing) and interprets only the
handful of opcodes and the three numpy globals that a plain ``ndarray`` pickle uses; anything else is
refused. The package's own modules import TensorFlow at import time, so we locate its folder without
importing it.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import math
import pickletools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ANIMAL_MNIST_INSTALL_HINT = "pip install --no-deps animal-mnist==0.4 (or `make setup`)"
_ANIMAL_MNIST_DATA = ("data", "Animal_MNIST", "animal_data_version_3.gz")
_ANIMAL_MNIST_LABELS = ("data", "Animal_MNIST", "animal_label_version_3.gz")

# Label id -> name. The package description lists the classes alphabetically without saying which id is
# which. Verified by eye: 12 images per id, spread over each id's index range, rendered to a PNG grid, one
# row per id; the rows were bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra, i.e. the
# ids follow the alphabetical list. (Images are white shapes on black; zebras keep some inner stripes.)
ANIMAL_MNIST_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")

# Gzip members are decompressed into memory; refuse anything absurdly large (a decompression bomb).
_MAX_PICKLE_BYTES = 1 << 30

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_NUMERIC_KINDS = "biufc"


class PackagedDatasetMissing(FileNotFoundError):
    """A dataset package (or one of its data files) is not installed; the message says how to install it."""


@dataclass
class _Global:
    module: str
    name: str


@dataclass
class _DtypeSpec:
    code: str
    byteorder: str = "="


@dataclass
class _ArraySpec:
    state: tuple | None = field(default=None)


class _Mark:
    """Stack marker pushed by MARK; a class so no real value can be mistaken for it."""


_MARK = _Mark()


def _open_pickle_bytes(path: Path) -> bytes:
    with path.open("rb") as handle:
        magic = handle.read(2)
    try:
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                data = handle.read(_MAX_PICKLE_BYTES + 1)
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read/decompress: {exc}") from exc
    if len(data) > _MAX_PICKLE_BYTES:
        raise ValueError(f"{path}: decompressed pickle exceeds {_MAX_PICKLE_BYTES} bytes")
    return data


def _pop_mark(stack: list, path: Path) -> list:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index] is _MARK:
            items = stack[index + 1 :]
            del stack[index:]
            return items
    raise ValueError(f"{path}: malformed pickle (no MARK on the stack)")


def _reduce(func: object, args: object, path: Path) -> object:
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise ValueError(f"{path}: unexpected REDUCE of {func!r}")
    key = (func.module, func.name)
    if key in _RECONSTRUCT:
        if len(args) != 3 or not isinstance(args[0], _Global) or (args[0].module, args[0].name) != _NDARRAY:
            raise ValueError(f"{path}: _reconstruct must rebuild a plain numpy.ndarray, got {args!r}")
        return _ArraySpec()
    if key == _DTYPE:
        if not args or not isinstance(args[0], str):
            raise ValueError(f"{path}: numpy.dtype needs a type code string, got {args!r}")
        return _DtypeSpec(code=args[0])
    raise ValueError(f"{path}: refusing to call {func.module}.{func.name}")


def _build(target: object, state: object, path: Path) -> None:
    if not isinstance(state, tuple):
        raise ValueError(f"{path}: BUILD state must be a tuple, got {type(state).__name__}")
    if isinstance(target, _DtypeSpec):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if len(state) < 8 or not isinstance(state[1], str) or any(s is not None for s in state[2:5]):
            raise ValueError(f"{path}: only simple (non-structured) dtypes are supported, got state {state!r}")
        target.byteorder = state[1]
    elif isinstance(target, _ArraySpec):
        target.state = state
    else:
        raise ValueError(f"{path}: unexpected BUILD on {target!r}")


def _interpret(data: bytes, path: Path) -> object:
    """Evaluate the pickle symbolically: globals become names, calls become descriptions, nothing runs."""
    stack: list = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise ValueError(f"{path}: malformed pickle (stack holds {len(stack)} items at STOP)")
                return stack[0]
            if name == "MARK":
                stack.append(_MARK)
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                stack.append(str(arg))
            elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
                stack.append(bytes(arg))
            elif name in ("BININT", "BININT1", "BININT2", "LONG1", "INT", "LONG"):
                stack.append(arg if not isinstance(arg, bool) else int(arg))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                if len(stack) < size:
                    raise ValueError(f"{path}: malformed pickle (stack underflow at {name})")
                items = tuple(stack[-size:])
                del stack[-size:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(_pop_mark(stack, path)))
            elif name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                if not isinstance(module, str) or not isinstance(attr, str):
                    raise ValueError(f"{path}: malformed pickle (STACK_GLOBAL needs two strings)")
                stack.append(_Global(module, attr))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_reduce(stack.pop(), args, path))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state, path)
            else:
                raise ValueError(f"{path}: unsupported pickle opcode {name}; only plain numpy arrays are read")
            if stack and isinstance(stack[-1], _Global):
                # Checked at load time, not call time, so an unexpected module is named even if never called.
                key = (stack[-1].module, stack[-1].name)
                if key not in _RECONSTRUCT and key not in (_NDARRAY, _DTYPE):
                    raise ValueError(f"{path}: refusing pickle that references {key[0]}.{key[1]}")
    except (IndexError, KeyError) as exc:
        raise ValueError(f"{path}: malformed pickle ({type(exc).__name__}: {exc})") from exc
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: malformed pickle ({exc})") from exc
    raise ValueError(f"{path}: truncated pickle (no STOP opcode)")


def read_pickled_ndarray(path: str | Path) -> np.ndarray:
    """Read one numpy array from a (optionally gzip'd) pickle without unpickling it.

    ``pickle.load`` would call whatever the file names (``os.system`` included); this walks the opcodes
    and accepts only ``numpy...._reconstruct(numpy.ndarray, ...)`` with a simple numeric ``numpy.dtype``
    and a raw bytes payload, whose length must equal ``prod(shape) * itemsize``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickled array not found: {path}")
    result = _interpret(_open_pickle_bytes(path), path)
    if not isinstance(result, _ArraySpec) or result.state is None:
        raise ValueError(f"{path}: the pickle does not hold a numpy array")
    state = result.state
    # ndarray.__setstate__: (version, shape, dtype, is_fortran, raw bytes)
    if len(state) != 5:
        raise ValueError(f"{path}: unexpected ndarray state with {len(state)} fields")
    _, shape, dtype_spec, is_fortran, raw = state
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{path}: array shape must be a tuple of non-negative ints, got {shape!r}")
    if not isinstance(dtype_spec, _DtypeSpec) or not isinstance(raw, bytes) or not isinstance(is_fortran, bool):
        raise ValueError(f"{path}: array state is not (shape, dtype, fortran flag, raw bytes)")
    try:
        dtype = np.dtype(dtype_spec.code)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: unknown dtype {dtype_spec.code!r}") from exc
    if dtype.kind not in _NUMERIC_KINDS:
        raise ValueError(f"{path}: only numeric dtypes are read, got {dtype_spec.code!r}")
    if dtype_spec.byteorder in "<>":
        dtype = dtype.newbyteorder(dtype_spec.byteorder)
    elif dtype_spec.byteorder not in "|=":
        raise ValueError(f"{path}: unknown byte order {dtype_spec.byteorder!r}")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: payload holds {len(raw)} bytes, shape {shape} of {dtype} needs {expected}")
    array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if is_fortran else "C")
    return array.astype(dtype.newbyteorder("="), copy=True)


def _animal_mnist_root() -> Path:
    """The installed ``animal_mnist`` folder, found without running its (TensorFlow-importing) code."""
    spec = importlib.util.find_spec("animal_mnist")  # top-level find_spec does not execute the package
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    try:
        dist = importlib.metadata.distribution("animal-mnist")
    except importlib.metadata.PackageNotFoundError:
        raise PackagedDatasetMissing(
            f"the animal-mnist package is not installed; {ANIMAL_MNIST_INSTALL_HINT}"
        ) from None
    return Path(str(dist.locate_file("animal_mnist")))


def _stratified_subsample(labels: np.ndarray, max_images: int) -> np.ndarray:
    """Sorted indices: about ``max_images // classes`` per class, spread evenly over each class's index order.

    Remainders go to the lowest class ids; a class too small to fill its share gives up all it has.
    """
    classes = np.unique(labels)
    base, extra = divmod(max_images, len(classes))
    chosen = []
    for position, label in enumerate(classes):
        members = np.flatnonzero(labels == label)
        take = min(len(members), base + (1 if position < extra else 0))
        if take:
            chosen.append(members[np.linspace(0, len(members), take, endpoint=False).astype(np.int64)])
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def load_animal_mnist(max_images: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[Path]]:
    """Animal-MNIST: 10,000 28×28 animal silhouettes, 1000 per class, from the ``animal-mnist`` package.

    Returns ``(pixels uint8 (N, 28, 28), labels int64 (N,), class_names, source_files)``. ``max_images`` > 0
    keeps a deterministic, class-balanced subsample so a suite can run in seconds.
    """
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    root = _animal_mnist_root()
    data_path, label_path = root.joinpath(*_ANIMAL_MNIST_DATA), root.joinpath(*_ANIMAL_MNIST_LABELS)
    for path in (data_path, label_path):
        if not path.is_file():
            raise PackagedDatasetMissing(f"animal-mnist data file missing: {path}; {ANIMAL_MNIST_INSTALL_HINT}")
    pixels = read_pickled_ndarray(data_path)
    labels = read_pickled_ndarray(label_path)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[1:] != (28, 28):
        raise ValueError(f"{data_path}: expected uint8 (N, 28, 28) pixels, got {pixels.dtype} {pixels.shape}")
    if labels.ndim != 1 or labels.shape[0] != pixels.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{label_path}: expected {pixels.shape[0]} integer labels, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(ANIMAL_MNIST_CLASSES)):
        raise ValueError(f"{label_path}: labels outside [0, {len(ANIMAL_MNIST_CLASSES)})")
    if max_images and max_images < len(labels):
        keep = _stratified_subsample(labels, max_images)
        pixels, labels = pixels[keep], labels[keep]
    return pixels, labels, list(ANIMAL_MNIST_CLASSES), [data_path, label_path]
