"""Save and load parameter trees as ``.npz`` files without pickle: keys are '/'-joined tree paths.

:func:`load` trusts nothing in the file: it checks the member names and every array's header (dtype and shape)
against the template before it reads any data, and then reads exactly the bytes the template's shapes need, so a
hostile file costs at most the template's own size. Both functions add ``.npz`` to a path without it, as
``numpy.savez`` does.

>>> import numpy as np, tempfile, os
>>> params = {"layer_1": {"weight": np.ones((2, 3)), "bias": np.zeros(2)}}
>>> path = os.path.join(tempfile.mkdtemp(), "params.npz")
>>> save(path, params)
>>> load(path, params)["layer_1"]["weight"].shape
(2, 3)
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib

import numpy as np

from ..backend import get_namespace, to_host
from .tree import tree_map, tree_paths

__all__ = ["save", "load"]

#: dtype kinds a parameter file may hold: booleans, integers and real floats (never objects, strings, bytes,
#: complex numbers, dates, time spans or structured records)
ALLOWED_KINDS = "biuf"
_KIND_NAMES = {"O": "object, which would need pickle", "S": "bytes", "U": "string", "c": "complex", "M": "datetime", "m": "timedelta",
               "V": "structured/void"}
_MAX_HEADER = 10_000
# what reading a damaged archive can raise (zipfile raises NotImplementedError for unknown compression and
# RuntimeError for encrypted members)
_DAMAGED = (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def _npz_path(path):
    """``path`` with ``.npz`` appended when it has another suffix (what ``numpy.savez`` writes); file objects
    pass through."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        return path if path.endswith(".npz") else path + ".npz"
    return path


def _check_kind(dtype, key):
    """None, or why ``dtype`` cannot be a parameter."""
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        return f"{key}: dtype {dtype} ({_KIND_NAMES.get(dtype.kind, dtype.kind)}) is not allowed in a parameter file"
    return None


#: Python scalars a tree may hold (a layer state's ``training`` flag, an optimiser state's ``step``): saved as
#: 0-d arrays, and given back by :func:`load` with the template's Python type
_SCALARS = (bool, int, float)


def _transient(leaf) -> bool:
    """True for a leaf that describes the last call rather than the model (``nn_transient = True`` on its class,
    as a DEQ's ``state["solution"]``): :func:`save` leaves it out and :func:`load` gives None in its place."""
    return getattr(type(leaf), "nn_transient", False) is True


def _scalar_array(leaf, key):
    """The 0-d array of a Python bool, int or float leaf."""
    if type(leaf) is int and not np.iinfo(np.int64).min <= leaf <= np.iinfo(np.int64).max:
        raise ValueError(f"params leaf {key!r}: the int {leaf} does not fit in int64")
    return np.asarray(leaf)


def _shape(leaf):
    return () if isinstance(leaf, _SCALARS) else tuple(leaf.shape)


def save(path, params) -> None:
    """Write every array leaf of ``params`` to ``path`` (an ``.npz``, uncompressed; ``.npz`` is appended when the
    path has another suffix), keyed by its path. Leaves must be real (boolean, integer or float) arrays, or
    Python bools, ints and floats (a state's flags and step counts), stored as 0-d arrays. A record of the last
    call (a DEQ's ``state["solution"]``) is not saved: a state saved after training loads into the state
    :func:`deqcore.nn.setup` gives.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p")
    >>> save(path, {"dense": {"weight": np.ones((2, 2))}})
    >>> np.load(path + ".npz", allow_pickle=False).files
    ['dense/weight']
    >>> save(path, {"w": np.array(["a"])})
    Traceback (most recent call last):
    ...
    TypeError: params leaf 'w': dtype <U1 (string) is not allowed in a parameter file
    """
    entries = tree_paths(params)
    arrays = {}
    for key, leaf in entries:
        if _transient(leaf):
            continue
        if isinstance(leaf, _SCALARS):
            arrays[key] = _scalar_array(leaf, key)
            continue
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"params leaf {key!r} is a {type(leaf).__name__}, not an array or a Python bool, "
                            f"int or float")
        problem = _check_kind(np.dtype(leaf.dtype), f"params leaf {key!r}")
        if problem:
            raise TypeError(problem)
        arrays[key] = to_host(leaf)
    np.savez(_npz_path(path), **arrays)


def _read_header(fh):
    """(shape, fortran_order, dtype, header bytes) of the ``.npy`` stream ``fh``; reads the header only."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
    else:
        raise ValueError(f".npy format version {version} is not supported")
    return tuple(shape), fortran, np.dtype(dtype), fh.tell()


def _members(archive, where):
    """{key: ZipInfo} of an ``.npz`` archive; ValueError for anything that is not one array per key."""
    members, problems = {}, []
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or not name.endswith(".npy"):
            problems.append(f"member {name!r} is not an array (.npy)")
            continue
        key = name[:-4]
        if key in members:
            problems.append(f"{key}: stored twice")
        members[key] = info
    if problems:
        raise ValueError(f"cannot load {where}: " + "; ".join(problems))
    return members


def load(path, template):
    """Read parameters saved by :func:`save` into the structure, dtypes and device of ``template`` (a Python
    bool, int or float leaf of the template gets a value of its type).

    Before reading any data, raises ``ValueError`` listing every missing key, unexpected key, shape mismatch,
    disallowed dtype (objects, strings, complex numbers, dates: never unpickled nor cast) and member whose
    stored size does not match its header. Then reads exactly the bytes the template's shapes need.

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "p.npz")
    >>> save(path, {"weight": np.ones((2, 2))})
    >>> load(path, {"weight": np.zeros((3, 2))})
    Traceback (most recent call last):
    ...
    ValueError: cannot load '...p.npz' into the template: weight: file has shape (2, 2), template ...
    """
    expected = {key: leaf for key, leaf in tree_paths(template) if not _transient(leaf)}
    path = _npz_path(path)
    where = repr(path) if isinstance(path, str) else "the file"
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except _DAMAGED as err:
        raise ValueError(f"cannot load {where}: not an .npz archive ({err})") from None
    with archive:
        members = _members(archive, where)
        problems = []
        missing = [k for k in expected if k not in members]
        unexpected = [k for k in members if k not in expected]
        if missing:
            problems.append("missing in the file: " + ", ".join(missing))
        if unexpected:
            problems.append("not in the template: " + ", ".join(unexpected))
        headers = {}
        for key, leaf in expected.items():
            if key not in members:
                continue
            try:
                with archive.open(members[key]) as fh:
                    shape, fortran, dtype, offset = _read_header(fh)
            except _DAMAGED as err:
                problems.append(f"{key}: unreadable array header ({err})")
                continue
            problem = _check_kind(dtype, key)
            if problem:
                problems.append(problem)
                continue
            if shape != _shape(leaf):
                problems.append(f"{key}: file has shape {shape}, template expects {_shape(leaf)}")
                continue
            nbytes = math.prod(shape) * dtype.itemsize
            if members[key].file_size != offset + nbytes:
                problems.append(f"{key}: stored size {members[key].file_size} bytes, but its header declares "
                                f"{offset + nbytes}")
                continue
            headers[key] = (shape, fortran, dtype, offset, nbytes)
        if problems:
            raise ValueError(f"cannot load {where} into the template: " + "; ".join(problems))
        stored = {key: _read_data(archive, members[key], *headers[key], where) for key in expected}
    cast = {key: _cast(stored[key], leaf, key) for key, leaf in expected.items()}
    problems = [problem for _, problem in cast.values() if problem]
    if problems:
        raise ValueError(f"cannot load {where} into the template: " + "; ".join(problems))
    leaves = iter(key for key, leaf in tree_paths(template) if not _transient(leaf))

    def fill(leaf):
        if _transient(leaf):
            return None
        value = cast[next(leaves)][0]
        if isinstance(leaf, _SCALARS):            # the template's Python type, as arrays get its dtype
            return type(leaf)(value.item())
        return get_namespace(leaf).asarray(value)

    return tree_map(fill, template)


def _cast(array, leaf, key):
    """``(array in the template leaf's dtype, None)``, or ``(None, why)`` when the cast would change values
    silently: into a bool or integer leaf only values it holds exactly (no truncated fraction, no wrap-around);
    into a float leaf, rounding is what a float32 template asks for, but a finite value may not overflow to
    infinity."""
    target = np.dtype(type(leaf)) if isinstance(leaf, _SCALARS) else np.dtype(leaf.dtype)
    with np.errstate(all="ignore"):
        out = array.astype(target)
        if target.kind in "biu" and array.dtype != target:
            exact = out.astype(array.dtype) == array
            if array.dtype.kind == "f":
                exact &= np.isfinite(array)
            if not exact.all():
                example = array[~exact].ravel()[0].item()
                return None, (f"{key}: the file holds {array.dtype} values that the template's {target} cannot "
                              f"hold exactly (e.g. {example!r}); loading would truncate or wrap them")
        elif target.kind == "f" and (np.isfinite(array) & ~np.isfinite(out)).any():
            example = array[np.isfinite(array) & ~np.isfinite(out)].ravel()[0].item()
            return None, (f"{key}: the file holds values beyond the range of the template's {target} (e.g. "
                          f"{example!r}); loading would make them infinite")
    return out, None


def _read_data(archive, info, shape, fortran, dtype, offset, nbytes, where):
    """The array of one member: exactly ``nbytes`` after its header, never more."""
    try:
        with archive.open(info) as fh:
            fh.read(offset)
            data = fh.read(nbytes)
    except _DAMAGED as err:
        raise ValueError(f"cannot load {where}: {info.filename[:-4]} is corrupt ({err})") from None
    if len(data) != nbytes:
        raise ValueError(f"cannot load {where}: {info.filename[:-4]} is truncated ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
