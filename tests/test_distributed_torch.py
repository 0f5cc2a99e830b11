"""dqt.DEQ under DistributedDataParallel on 2 gloo processes: after the all-reduce every rank holds the
single-process gradient of the whole batch (float64, to round-off), for a DEQ alone, a DEQ whose cell has
buffers, and a DEQ inside a larger module."""

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

pytestmark = pytest.mark.timeout(300)

WORLD = 2
BATCH, INPUTS, WIDTH = 12, 5, 6


class BufferedCell(torch.nn.Module):
    """f(z, x) = tanh(W (mask ⊙ z) + x + shift): ``mask`` and ``shift`` are buffers, not parameters."""

    def __init__(self, width):
        super().__init__()
        self.W = torch.nn.Linear(width, width, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.W.weight.mul_(0.6 / torch.linalg.matrix_norm(self.W.weight, ord=2))
        self.register_buffer("mask", (torch.arange(width) % 3 != 0).to(torch.float64))
        self.register_buffer("shift", torch.linspace(-0.2, 0.2, width, dtype=torch.float64))

    def forward(self, z, x):
        return torch.tanh(self.W(z * self.mask) + x + self.shift)


class Classifier(torch.nn.Module):
    """encoder → DEQ → head: the DEQ inside a larger module."""

    def __init__(self, cell):
        super().__init__()
        from deqcore.interop import torch as dqt

        self.encoder = torch.nn.Linear(INPUTS, WIDTH, dtype=torch.float64)
        self.deq = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=200)
        self.head = torch.nn.Linear(WIDTH, 3, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.deq(self.encoder(x)))


class DEQOnly(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        from deqcore.interop import torch as dqt

        self.deq = dqt.DEQ(cell, atol=1e-12, rtol=0.0, max_steps=200)

    def forward(self, x):
        return self.deq(x[:, :WIDTH] if x.shape[1] >= WIDTH else torch.nn.functional.pad(x, (0, WIDTH - x.shape[1])))


def _build(kind):
    from deqcore.interop import torch as dqt

    torch.manual_seed(0)
    if kind == "deq":
        return DEQOnly(dqt.example_cell(WIDTH, WIDTH))
    if kind == "buffers":
        return DEQOnly(BufferedCell(WIDTH))
    return Classifier(BufferedCell(WIDTH))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, INPUTS, generator=g, dtype=torch.float64), torch.randint(0, 3, (BATCH,), generator=g)


def _loss(model, x, y):
    out = model(x)
    if out.shape[1] == 3:
        return torch.nn.functional.cross_entropy(out, y)
    return (out ** 2).mean()


def _worker(rank, port, kinds, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y = _data()
        for kind in kinds:
            reference = _build(kind)                  # one process, the whole batch
            _loss(reference, x, y).backward()
            model = torch.nn.parallel.DistributedDataParallel(_build(kind))
            shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
            _loss(model, x[shard], y[shard]).backward()     # DDP averages the two half-batch gradients
            errors = [float((p.grad - q.grad).abs().max() / q.grad.abs().max())
                      for p, q in zip(model.module.parameters(), reference.parameters())]
            np.save(os.path.join(out_dir, f"{kind}-{rank}.npy"), np.array(errors))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_the_single_process_gradient_of_the_whole_batch(tmp_path):
    kinds = ("deq", "buffers", "classifier")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), kinds, str(tmp_path)), nprocs=WORLD, join=True)
    for kind in kinds:
        for rank in range(WORLD):
            errors = np.load(tmp_path / f"{kind}-{rank}.npy")
            n_params = len(list(_build(kind).parameters()))
            assert errors.size == n_params >= 1
            assert errors.max() < 1e-12, (kind, rank, errors)


def test_the_split_is_not_trivial():
    """The half-batch gradients differ from the whole-batch one: the all-reduce is what makes them equal."""
    x, y = _data()
    whole, half = _build("classifier"), _build("classifier")
    _loss(whole, x, y).backward()
    _loss(half, x[:BATCH // 2], y[:BATCH // 2]).backward()
    diff = max(float((p.grad - q.grad).abs().max()) for p, q in zip(half.parameters(), whole.parameters()))
    assert diff > 1e-3
