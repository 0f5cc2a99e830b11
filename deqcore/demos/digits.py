"""Train a DEQ classifier on scikit-learn's bundled digits (8×8 images, 10 classes) with deqcore alone.

The classifier is ``Dense(64 → h) → DEQ → Dense(h → 10)`` where the DEQ's layer is
f((z, x)) = tanh(W z + x), solved by Anderson acceleration (or any solver named on the command line) and
differentiated by the implicit adjoint. Prints the test accuracy, mean forward/backward NFE and times, and
writes two PNG plots: loss/accuracy per epoch, and residual against iteration for several solvers.

Run it with ``python -m deqcore demo`` (``--help`` lists the flags).
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

import deqcore as dq
from deqcore import nn
from deqcore.cli import ArgumentParser

__all__ = ["main", "build_classifier", "load_digits_split", "train"]

SOLVERS = {
    "anderson": lambda: dq.Anderson(),
    "broyden": lambda: dq.Broyden(),
    "fixed_point": lambda: dq.FixedPointIteration(),
    "newton": lambda: dq.NewtonRaphson(),
    "vcabm3": lambda: dq.VCABM3(),
    "vcab3": lambda: dq.VCAB3(),
    "tsit5": lambda: dq.Tsit5(),
}


def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
    """(x_train, y_train, x_test, y_test): pixel values scaled to [0, 1], a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=test_fraction, random_state=seed, stratify=data.target)
    return x_train, y_train, x_test, y_test


def build_classifier(width: int, solver, *, atol=1e-3, rtol=1e-3, max_steps=32, init="zeros", skip_loss_weight=0.0):
    """``Chain(Dense(64 → width), DEQ, Dense(width → 10))`` with f((z, x)) = tanh(W z + x).

    ``init`` and ``skip_loss_weight`` as in :class:`deqcore.DeepEquilibriumNetwork` (a layer as ``init`` makes a
    skip DEQ whose initial guess is trained through the skip loss).
    """
    f = nn.Chain(nn.Parallel(nn.add, nn.Dense(width, width, use_bias=False, weight_norm=True), nn.NoOpLayer()),
                 nn.Activation("tanh"))
    deq = dq.DeepEquilibriumNetwork(f, solver, init=init, atol=atol, rtol=rtol, max_steps=max_steps,
                                    skip_loss_weight=skip_loss_weight)
    return nn.Chain(nn.Dense(64, width), deq, nn.Dense(width, 10))


def train(model, data, *, epochs=25, batch_size=64, lr=1e-2, seed=0, progress=True):
    """Train with Adam and a cosine schedule; returns (params, state, history)."""
    from tqdm import tqdm

    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    params, state = nn.setup(rng, model)
    steps_per_epoch = int(np.ceil(len(x_train) / batch_size))
    total_steps = epochs * steps_per_epoch        # (a warm-up of one epoch, shorter when that is all there is)
    opt = nn.Adam(lr=nn.cosine_schedule(lr, total_steps, warmup_steps=min(steps_per_epoch, total_steps - 1)))
    opt_state = opt.init(params)
    history = {"loss": [], "train_accuracy": [], "test_accuracy": [], "forward_nfe": [], "backward_nfe": [],
               "forward_time": [], "backward_time": [], "unconverged": [], "samples": []}
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress)
    for _ in bar:
        order = rng.permutation(len(x_train))
        losses, correct = [], 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # counted per step below and reported at the end, instead of a warning in the middle of training
                warnings.filterwarnings("ignore", message="the forward solve of", category=RuntimeWarning)
                logits, pullback, state = nn.vjp(model, x_train[idx], params, state)
            t1 = time.perf_counter()
            loss, dlogits = nn.softmax_cross_entropy(logits, y_train[idx])
            _, grads = pullback(dlogits)
            t2 = time.perf_counter()
            params, opt_state = opt.update(grads, opt_state, params)
            solution = state["layer_2"]["solution"]
            history["forward_nfe"].append(solution.nfev)
            history["unconverged"].append(int((~np.asarray(solution.success)).sum()))
            history["samples"].append(len(idx))
            history["backward_nfe"].append(solution.adjoint.nvjp if solution.adjoint is not None else 0)
            history["forward_time"].append(t1 - t0)
            history["backward_time"].append(t2 - t1)
            losses.append(float(loss))
            correct += int((np.argmax(logits, axis=1) == y_train[idx]).sum())
        history["loss"].append(float(np.mean(losses)))
        history["train_accuracy"].append(correct / len(x_train))
        history["test_accuracy"].append(evaluate(model, params, state, x_test, y_test))
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", test=f"{history['test_accuracy'][-1]:.3f}")
    return params, state, history


def evaluate(model, params, state, x, y) -> float:
    """Test accuracy (inference mode)."""
    logits, _ = model(x, params, nn.testmode(state))
    return float(np.mean(np.argmax(logits, axis=1) == y))


def residual_curves(model, params, state, x, solver_names, budgets=(1, 2, 3, 4, 6, 8, 11, 16, 22, 30, 40)):
    """Per solver: the batch's largest residual max|f(z) − z| after each iteration budget in ``budgets``."""
    encoder, deq = model.layers[0], model.layers[1]
    injection, _ = encoder(x, params["layer_1"], state["layer_1"])
    f_params, f_state = params["layer_2"]["model"], state["layer_2"]["model"]
    f = lambda z: deq.model((z, injection), f_params, f_state)[0]  # noqa: E731
    curves = {}
    for name in solver_names:
        solver = SOLVERS[name]()
        curve = []
        for k in budgets:
            if name in ("vcabm3", "vcab3", "tsit5"):
                # an ODE solver's tolerance sets its step sizes: use a moderate one, not the root solvers' 1e-12
                sol = dq.steady_state(lambda t, z: f(z) - z, np.zeros_like(injection), solver, atol=1e-5,
                                      rtol=1e-5, max_steps=k, batched=True, throw=False)
            else:
                sol = dq.fixed_point(f, np.zeros_like(injection), solver, atol=1e-12, rtol=0.0, max_steps=k,
                                     batched=True, throw=False)
            curve.append(float(np.abs(f(sol.value) - sol.value).max()))
        curves[name] = (list(budgets), curve)
    return curves


def plot(history, curves, out_dir):
    """Write training.png and residuals.png into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["loss"], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="Loss", yscale="log")
    ax2.plot(epochs, history["train_accuracy"], marker="o", label="train")
    ax2.plot(epochs, history["test_accuracy"], marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax2.legend()
    fig.tight_layout()
    training_path = os.path.join(out_dir, "training.png")
    fig.savefig(training_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (budgets, curve) in curves.items():
        ax.semilogy(budgets, np.maximum(curve, 1e-16), marker=".", label=name)
    ax.set(xlabel="iterations or ODE steps (max_steps)", ylabel="max |f(z) - z| over the test set",
           title="Residual of the trained DEQ per solver")
    ax.legend()
    fig.tight_layout()
    residual_path = os.path.join(out_dir, "residuals.png")
    fig.savefig(residual_path, dpi=110)
    plt.close(fig)
    return training_path, residual_path


def build_parser():
    parser = ArgumentParser(prog="python -m deqcore demo",
                                     description="Train a DEQ classifier on scikit-learn's digits data.")
    parser.add_argument("--solver", choices=sorted(SOLVERS), default="anderson", help="forward solver")
    parser.add_argument("--width", type=int, default=64, help="width of the equilibrium state (default 64)")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of Adam (default 1e-2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", default="demo_output", help="folder for the PNG plots (default demo_output)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("width", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 < args.lr < float("inf"):             # (NaN fails too)
        parser.error("--lr must be a finite positive number")
    if not 0 <= args.seed < 2 ** 32:
        parser.error("--seed must be an integer in [0, 2**32 - 1]")
    try:                                           # (before training: a bad --out fails now, not after it)
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        parser.error(f"--out {args.out!r}: cannot create the folder ({err.strerror or err})")
    data = load_digits_split(args.seed)
    model = build_classifier(args.width, SOLVERS[args.solver]())
    print(f"DEQ classifier on digits: {len(data[0])} training / {len(data[2])} test images, width {args.width}, "
          f"solver {args.solver}")
    t0 = time.perf_counter()
    params, state, history = train(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    curves = residual_curves(model, params, state, data[2], ["fixed_point", "anderson", "broyden", "vcabm3"])
    training_path, residual_path = plot(history, curves, args.out)
    print(f"training time: {elapsed:.1f} s ({elapsed / args.epochs:.2f} s per epoch)")
    print(f"mean forward NFE: {np.mean(history['forward_nfe']):.1f}, mean backward NFE (VJPs): "
          f"{np.mean(history['backward_nfe']):.1f}")
    print(f"mean forward time: {1e3 * np.mean(history['forward_time']):.2f} ms, mean backward time: "
          f"{1e3 * np.mean(history['backward_time']):.2f} ms per batch")
    print(f"plots: {training_path}, {residual_path}")
    print(f"forward solves short of the tolerance (best iterate used, approximate gradient): "
          f"{sum(history['unconverged'])} of {sum(history['samples'])} samples over training")
    print(f"test accuracy: {history['test_accuracy'][-1]:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
