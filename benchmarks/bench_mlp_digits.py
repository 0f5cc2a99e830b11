"""An MLP trained with deqcore.nn on scikit-learn's bundled digits (8x8 images, 10 classes), side by side
with the same model, optimiser and batches in PyTorch (CPU) and scikit-learn's MLPClassifier.

    python benchmarks/bench_mlp_digits.py            # 40 epochs, hidden sizes 256-128
    python benchmarks/bench_mlp_digits.py --quick    # 10 epochs

Fixed split: 75% train / 25% test, stratified, random_state=0. Every implementation trains ``--repeats``
times (rounds interleaved, BLAS and PyTorch on one thread: the matrices are small and the machine is shared).
Prints a Markdown table (median time per epoch over all epochs of all repeats, test accuracy, ratio of epoch
time against deqcore float64) and writes it to benchmarks/results/mlp_digits.md with the machine and library
versions. Exits with status 1 when deqcore reaches less than 95% test accuracy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import sklearn
from threadpoolctl import threadpool_limits
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deqcore as dq  # noqa: E402
from deqcore import nn  # noqa: E402

BATCH = 64
PEAK_LR = 3e-3
WEIGHT_DECAY = 1e-4
CLIP = 5.0


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float64)
    return train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)


def batches(rng, n, epochs):
    """The same shuffled mini-batches for every framework."""
    return [np.array_split(rng.permutation(n), range(BATCH, n, BATCH)) for _ in range(epochs)]


def train_deqcore(xtr, ytr, xte, yte, plan, hidden, dtype):
    layers, width = [], 64
    for h in hidden:
        layers.append(nn.Dense(width, h, "relu"))
        width = h
    model = nn.Chain(*layers, nn.Dense(width, 10))
    params, state = nn.setup(np.random.default_rng(0), model, dtype=dtype)
    steps = sum(len(epoch) for epoch in plan)
    opt = nn.AdamW(lr=nn.cosine_schedule(PEAK_LR, steps, warmup_steps=steps // 20), weight_decay=WEIGHT_DECAY)
    opt_state = opt.init(params)
    xtr, xte = xtr.astype(dtype), xte.astype(dtype)
    times = []
    for epoch in plan:
        t0 = time.perf_counter()
        for idx in epoch:
            logits, pullback, state = nn.vjp(model, xtr[idx], params, state)
            _, dlogits = nn.softmax_cross_entropy(logits, ytr[idx])
            grads, _ = nn.clip_by_global_norm(pullback(dlogits)[1], CLIP)
            params, opt_state = opt.update(grads, opt_state, params)
        times.append(time.perf_counter() - t0)
    logits, _ = model(xte, params, nn.testmode(state))
    return times, float(nn.accuracy(logits, yte))


def train_torch(xtr, ytr, xte, yte, plan, hidden):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    layers, width = [], 64
    for h in hidden:
        layers += [torch.nn.Linear(width, h, dtype=torch.float64), torch.nn.ReLU()]
        width = h
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10, dtype=torch.float64))
    steps = sum(len(epoch) for epoch in plan)
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, weight_decay=WEIGHT_DECAY)
    sched = nn.cosine_schedule(PEAK_LR, steps, warmup_steps=steps // 20)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, step = [], 0
    for epoch in plan:
        t0 = time.perf_counter()
        for idx in epoch:
            for group in opt.param_groups:
                group["lr"] = sched(step)
            step += 1
            idx_t = torch.from_numpy(idx)
            opt.zero_grad()
            loss = loss_fn(model(xtr_t[idx_t]), ytr_t[idx_t])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        pred = model(torch.from_numpy(xte)).argmax(1).numpy()
    return times, float(np.mean(pred == yte))


def train_sklearn(xtr, ytr, xte, yte, epochs, hidden):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=hidden, batch_size=BATCH, learning_rate_init=PEAK_LR,
                        alpha=WEIGHT_DECAY, max_iter=epochs, random_state=0, n_iter_no_change=epochs + 1)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xtr, ytr)
    return [(time.perf_counter() - t0) / clf.n_iter_], float(clf.score(xte, yte))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 epochs instead of 40")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="training runs per implementation")
    parser.add_argument("--output", default=None, help="the Markdown file (default results/mlp_digits.md, _quick.md with --quick)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = str(Path(__file__).parent / "results" / ("mlp_digits_quick.md" if args.quick else "mlp_digits.md"))
    epochs = args.epochs or (10 if args.quick else 40)
    repeats = args.repeats or (1 if args.quick else 3)
    hidden = (256, 128)
    xtr, xte, ytr, yte = data()
    plan = batches(np.random.default_rng(1), len(ytr), epochs)
    runs = {
        "deqcore.nn float64 (AdamW, cosine, clipping)":
            lambda: train_deqcore(xtr, ytr, xte, yte, plan, hidden, np.float64),
        "deqcore.nn float32": lambda: train_deqcore(xtr, ytr, xte, yte, plan, hidden, np.float32),
        "scikit-learn MLPClassifier (Adam, constant lr)":
            lambda: train_sklearn(xtr, ytr, xte, yte, epochs, hidden),
    }
    try:
        import torch  # noqa: F401

        runs["PyTorch CPU float64, same batches and schedule"] = \
            lambda: train_torch(xtr, ytr, xte, yte, plan, hidden)
    except ImportError:
        pass
    times = {name: [] for name in runs}
    accuracy = {}
    with threadpool_limits(1):
        for _ in range(repeats):
            for name, run in runs.items():
                epoch_times, accuracy[name] = run()
                times[name] += epoch_times
    medians = {name: float(np.median(t)) for name, t in times.items()}
    base_name = next(iter(runs))
    base_time, base_acc = medians[base_name], accuracy[base_name]
    rows = [(name, medians[name], accuracy[name]) for name in runs]

    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}",
                f"scikit-learn {sklearn.__version__}", f"deqcore {dq.__version__}"]
    if "torch" in sys.modules:
        versions.append(f"torch {sys.modules['torch'].__version__}")
    lines = [
        f"# mlp_digits: MLP 64-{'-'.join(map(str, hidden))}-10 on sklearn digits, {epochs} epochs, "
        f"batch {BATCH}",
        "",
        f"Split: {len(ytr)} train / {len(yte)} test (stratified, random_state=0). Time per epoch is the "
        f"median over all epochs of {repeats} training run(s) each (scikit-learn: fit time / epochs), "
        "one BLAS/PyTorch thread.",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs (shared; timings are "
        f"noisy); {', '.join(versions)}",
        "",
        "| implementation | time per epoch (ms) | ratio vs deqcore float64 | test accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, t, acc in rows:
        lines.append(f"| {name} | {1e3 * t:.2f} | {t / base_time:.2f} | {100 * acc:.2f}% |")
    table = "\n".join(lines)
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table + "\n")
    if base_acc < 0.95:
        print(f"deqcore reached {100 * base_acc:.2f}% < 95% test accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
