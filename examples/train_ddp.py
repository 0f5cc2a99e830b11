"""Data-parallel DEQ training with torch.distributed: one process per device, each on its share of the batch.

    torchrun --nproc_per_node=2 examples/train_ddp.py            # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 examples/train_ddp.py --backend nccl   # 8 GPUs, one per process

DistributedDataParallel all-reduces the gradients after ``backward``; deqcore's DEQ layer (forward solve and
implicit adjoint) runs inside each process on that process's samples and needs no change. Run without
torchrun it trains in one process.
"""

import argparse
import os
import time

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits

from deqcore.interop import torch as dqt


class DigitsDEQ(torch.nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.encoder = torch.nn.Linear(64, width)
        self.deq = dqt.DEQ(dqt.example_cell(width, width, dtype=torch.float32), atol=1e-4, rtol=1e-4,
                           max_steps=40)
        self.head = torch.nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.deq(torch.tanh(self.encoder(x))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128, help="global batch (split over the processes)")
    args = parser.parse_args()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group(args.backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.backend == "nccl" else "cpu")
    torch.manual_seed(0)                                  # every rank starts from the same weights
    model = DigitsDEQ().to(device)
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                          else None)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(digits.target, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    local = args.batch // world
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
        start, steps = time.perf_counter(), 0
        for i in range(0, len(x) - args.batch + 1, args.batch):
            idx = order[i + rank * local: i + (rank + 1) * local]     # this process's share of the batch
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()                                           # gradients all-reduced here
            opt.step()
            steps += 1
        with torch.no_grad():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        if rank == 0:
            print(f"epoch {epoch}: loss {loss.item():.3f}, accuracy {accuracy:.3f}, "
                  f"{(time.perf_counter() - start) / steps * 1e3:.1f} ms/step on {world} process(es)")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
