"""Parameter files from untrusted sources, and loss inputs: ``nn.load`` checks names, dtypes, shapes and sizes
before it reads any data (crafted hostile files below), ``save``/``load`` agree on the suffix, and
``softmax_cross_entropy`` refuses labels outside the classes."""

import io
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from deqcore import nn


def _npy(array=None, *, header=None, body=b""):
    """The bytes of a .npy member: ``array`` as NumPy writes it, or a hand-made ``header`` dict and ``body``."""
    buf = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(buf, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(buf, header)
        buf.write(body)
    return buf.getvalue()


def _archive(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


TEMPLATE = {"layer": {"weight": np.zeros((2, 3)), "bias": np.zeros(2)}}


def _good_members():
    return {"layer/weight.npy": _npy(np.arange(6.0).reshape(2, 3)), "layer/bias.npy": _npy(np.ones(2))}


def test_suffix_is_the_same_for_save_and_load(tmp_path):
    params = {"w": np.arange(3.0)}
    nn.save(tmp_path / "model", params)
    assert (tmp_path / "model.npz").exists() and not (tmp_path / "model").exists()
    for name in ("model", "model.npz"):
        np.testing.assert_array_equal(nn.load(tmp_path / name, {"w": np.zeros(3)})["w"], params["w"])
    nn.save(str(tmp_path / "other.npz"), params)
    np.testing.assert_array_equal(nn.load(str(tmp_path / "other"), {"w": np.zeros(3)})["w"], params["w"])


def test_crafted_file_with_the_right_headers_loads(tmp_path):
    members = _good_members()
    members["layer/weight.npy"] = _npy(np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)))
    loaded = nn.load(_archive(tmp_path / "ok.npz", members, zipfile.ZIP_DEFLATED), TEMPLATE)
    np.testing.assert_array_equal(loaded["layer"]["weight"], np.arange(6.0).reshape(2, 3))
    assert loaded["layer"]["weight"].dtype == np.float64


def test_extra_member_is_refused_without_decompressing_it(tmp_path):
    members = _good_members()
    members["payload.npy"] = _npy(np.zeros(2**23))                    # 64 MiB, a few hundred KiB deflated
    path = _archive(tmp_path / "extra.npz", members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="not in the template: payload"):
            nn.load(path, TEMPLATE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**22


def test_missing_member_and_non_array_members(tmp_path):
    members = _good_members()
    del members["layer/bias.npy"]
    with pytest.raises(ValueError, match="missing in the file: layer/bias"):
        nn.load(_archive(tmp_path / "missing.npz", members), TEMPLATE)
    members = dict(_good_members(), **{"notes.txt": b"hello"})
    with pytest.raises(ValueError, match="member 'notes.txt' is not an array"):
        nn.load(_archive(tmp_path / "txt.npz", members), TEMPLATE)
    (tmp_path / "plain.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not an .npz archive"):
        nn.load(tmp_path / "plain.npz", TEMPLATE)


def test_duplicate_member_is_refused(tmp_path):
    path = tmp_path / "dup.npz"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _archive(path, {})
        with zipfile.ZipFile(path, "a") as zf:
            for name, data in _good_members().items():
                zf.writestr(name, data)
            zf.writestr("layer/bias.npy", _npy(np.full(2, 7.0)))
    with pytest.raises(ValueError, match="layer/bias: stored twice"):
        nn.load(path, TEMPLATE)


def test_header_declaring_8_tib_is_a_clear_error(tmp_path):
    members = _good_members()
    members["layer/bias.npy"] = _npy(header={"descr": "<f8", "fortran_order": False, "shape": (2**40,)},
                                     body=b"\0" * 16)
    with pytest.raises(ValueError, match=r"layer/bias: file has shape \(1099511627776,\), template expects \(2,\)"):
        nn.load(_archive(tmp_path / "huge.npz", members), TEMPLATE)


@pytest.mark.parametrize("body", [b"\0" * 8, b"\0" * 24], ids=["truncated", "trailing"])
def test_member_size_must_match_its_header(tmp_path, body):
    members = _good_members()
    members["layer/bias.npy"] = _npy(header={"descr": "<f8", "fortran_order": False, "shape": (2,)}, body=body)
    with pytest.raises(ValueError, match="layer/bias: stored size"):
        nn.load(_archive(tmp_path / "size.npz", members), TEMPLATE)


class _Marker:
    """Unpickling this creates a file: proof that nothing was unpickled when the file stays absent."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("array,kind", [
    (np.array([1, "a"], dtype=object), "object"), (np.array(["ab", "c"]), "string"),
    (np.array([b"ab", b"c"]), "bytes"), (np.array([1 + 2j, 3j]), "complex"),
    (np.array(["2020-01-01", "2021-01-01"], dtype="datetime64[D]"), "datetime"),
    (np.array([1, 2], dtype="timedelta64[s]"), "timedelta"),
    (np.zeros(2, dtype=[("a", "<f8")]), "structured")])
def test_disallowed_dtypes_are_named_and_never_read(tmp_path, array, kind):
    members = _good_members()
    marker = tmp_path / "unpickled"
    if kind == "object":
        array = np.array([_Marker(marker), 1], dtype=object)
    members["layer/bias.npy"] = _npy(array)
    with pytest.raises(ValueError, match=f"layer/bias: dtype .*{kind}.* is not allowed"):
        nn.load(_archive(tmp_path / f"{kind}.npz", members), TEMPLATE)
    assert not marker.exists()


def test_save_refuses_leaves_load_would_refuse(tmp_path):
    with pytest.raises(TypeError, match="params leaf 'a/b': dtype object"):
        nn.save(tmp_path / "p", {"a": {"b": np.array([None])}})
    with pytest.raises(TypeError, match="params leaf 'c': dtype complex128"):
        nn.save(tmp_path / "p", {"c": np.zeros(2, complex)})
    assert not (tmp_path / "p.npz").exists()


@given(position=st.integers(0, 10**6), value=st.integers(1, 255), compressed=st.booleans())
def test_a_corrupted_byte_gives_a_value_error_or_the_right_shapes(tmp_path_factory, position, value,
                                                                 compressed):
    path = tmp_path_factory.mktemp("corrupt") / "p.npz"
    _archive(path, _good_members(), zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= value
    path.write_bytes(bytes(data))
    try:
        loaded = nn.load(path, TEMPLATE)
    except ValueError:
        return
    assert nn.tree_map(np.shape, loaded) == nn.tree_map(np.shape, TEMPLATE)


# -- losses ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels,named", [([0, 3, 1], "3"), ([-1, 0, 2], "-1"), ([5, -2, 5], "-2, 5")])
def test_cross_entropy_refuses_labels_outside_the_classes(labels, named):
    with pytest.raises(ValueError, match=rf"labels must be class indices in \[0, 3\).*got {named}$"):
        nn.softmax_cross_entropy(np.zeros((3, 3)), np.array(labels))


def test_cross_entropy_accepts_every_class():
    value, grad = nn.softmax_cross_entropy(np.zeros((3, 3)), np.array([0, 1, 2]))
    np.testing.assert_allclose(float(value), np.log(3.0))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


def test_a_deq_state_after_a_call_saves_without_its_solution_record_and_loads_into_either_template(tmp_path):
    import deqcore as dq
    from deqcore import nn

    model = dq.DeepEquilibriumNetwork(nn.Chain(nn.Parallel(nn.add, nn.Dense(3, 3, use_bias=False), nn.Dense(3, 3)),
                                               nn.BatchNorm(3), nn.Activation("tanh")), dq.Anderson())
    params, fresh = nn.setup(np.random.default_rng(0), model)
    params = nn.tree_map(lambda a: 0.3 * a, params)
    x = np.random.default_rng(1).standard_normal((5, 3))
    _, trained = model(x, params, fresh)                      # BatchNorm's running statistics moved
    assert trained["solution"] is not None
    path = tmp_path / "state.npz"
    nn.save(path, trained)
    assert not any(name.startswith("solution") for name in np.load(path).files)
    for template in (fresh, trained):
        loaded = nn.load(path, template)
        assert loaded["solution"] is None
        for a, b in zip(nn.tree_leaves(loaded["model"]), nn.tree_leaves(trained["model"])):
            np.testing.assert_array_equal(a, b)
        y_loaded, _ = model(x, params, loaded)
        y_trained, _ = model(x, params, trained)
        np.testing.assert_array_equal(y_loaded, y_trained)
