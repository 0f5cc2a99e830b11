"""Scale-out promises checked from outside, against the in-process solves of the same samples:

* JAX sharding on two CPU devices (a subprocess: XLA_FLAGS must be set before JAX starts): an eager
  ``sharded_fixed_point`` whose solve fails on one device or on both raises ``dq.SolveError``, as the eager
  unsharded ``fixed_point`` does, never JAX's ``JaxRuntimeError`` around it; a failure followed by a reduction
  over the devices (a loss's sum, a shared weight's gradient) raises, under jit and eagerly, where the process
  used to abort (the healthy device waited for the failed one in the all-reduce); ``throw=False`` gives every good
  sample the unsharded value; a batch that does not split over the devices, or a per-sample argument of another
  length, is a ValueError naming z0 / the argument;
* Dask: chunks of uneven sizes, one of them all failing, keep each sample's code and value of the in-process
  batched solve, and the stats are the chunks' summed; an unbatched-only method is refused when the lazy
  steady-state solve is built, not on the workers;
* the command line: ``demo --epochs 1`` trains; an ``--out`` folder that cannot be made, a ``--file`` that cannot
  be run and a malformed ``--scheduler`` are one-line usage errors naming the flag (exit code 2).
"""

import json

import numpy as np
import pytest

import deqcore as dq

from .background import EarlyRuns, two_device_jax_starter

# ------------------------------------------------------------------------------------------------- JAX sharding

SHARDED_FAILURES = r'''
import faulthandler, os, json, sys, warnings
# (collective timeouts: a device left waiting for a failed one aborts the process in 60 s, inside the test's limit;
# 5 s aborted healthy runs on a loaded machine, where one device's host solve can lag the other's that long. A run
# that hangs all the same prints every thread's stack before it ends.)
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 --xla_cpu_collective_call_warn_stuck_timeout_seconds=10"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=60")
faulthandler.dump_traceback_later(200, exit=True, file=sys.stderr)
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import deqcore as dq
from deqcore.interop import jax as dqj

mesh = jax.make_mesh((2,), ("b",))
x = jnp.asarray(np.linspace(0.0, 1.0, 4).reshape(4, 1))      # rows 0, 1 on device 0; rows 2, 3 on device 1
opts = dict(solver=dq.FixedPointIteration(), atol=1e-10, rtol=0.0, max_steps=60)
# contractive (factor 0.5) where a <= 0.5, expanding (factor 2) elsewhere: device 1's rows fail, device 0's do not
f = lambda z, a: jnp.where(a > 0.5, 2.0, 0.5) * jnp.cos(z) + a
report = {}

def outcome(name, call):
    try:
        out = call()
        report[name] = ["ok", np.asarray(out).ravel().tolist()]
    except Exception as err:
        report[name] = [type(err).__module__ + "." + type(err).__name__, str(err)[-2000:]]

sharded = lambda fn, a, **kw: dqj.sharded_fixed_point(fn, jnp.zeros_like(a), a, mesh=mesh, **{**opts, **kw})
outcome("one_device_fails", lambda: sharded(f, x))
outcome("both_fail", lambda: sharded(lambda z, a: 2.0 * jnp.cos(z) + a, x))
outcome("nan_sample", lambda: sharded(lambda z, a: 0.5 * jnp.cos(z) + a, x.at[1, 0].set(jnp.nan)))
outcome("unsharded", lambda: jax.vmap(lambda z, a: dqj.fixed_point(f, z, a, engine="host", **opts))(
    jnp.zeros_like(x), x))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    outcome("best_iterate", lambda: sharded(f, x, throw=False))
outcome("reference", lambda: jax.vmap(lambda z, a: dqj.fixed_point(f, z, a, engine="host", throw=False, **opts))(
    jnp.zeros_like(x), x))
outcome("odd_batch", lambda: sharded(lambda z, a: 0.5 * jnp.cos(z) + a, x[:3]))
outcome("short_arg", lambda: dqj.sharded_fixed_point(lambda z, a: 0.5 * jnp.cos(z) + a, jnp.zeros((4, 1)), x[:2],
                                                     mesh=mesh))
# a reduction over the devices after the failed solve: the healthy device waited in the all-reduce for the failed
# one, and XLA aborted the process (SIGABRT) after its timeout; a gradient of a shared weight the same
g = lambda z, a: jnp.where(a[1] > 0.5, 2.0, a[0]) * jnp.cos(z) + a[1]
loss = lambda w: dqj.sharded_fixed_point(g, jnp.zeros_like(x), (w, x), mesh=mesh, in_axes=(None, 0), **opts).sum()
outcome("jit_sum", lambda: jax.jit(loss)(jnp.asarray(0.5)))
outcome("jit_grad", lambda: jax.jit(jax.grad(loss))(jnp.asarray(0.5)))
with jax.set_mesh(mesh):
    outcome("eager_grad", lambda: jax.grad(loss)(jnp.asarray(0.5)))
good = lambda z, a: a[0] * jnp.cos(z) + a[1]
loss_good = lambda w: dqj.sharded_fixed_point(good, jnp.zeros_like(x), (w, x), mesh=mesh, in_axes=(None, 0),
                                              **opts).sum()
outcome("jit_grad_good", lambda: jax.jit(jax.grad(loss_good))(jnp.asarray(0.5)))
outcome("grad_good_unsharded", lambda: jax.grad(lambda w: jax.vmap(lambda z, a: dqj.fixed_point(
    good, z, (w, a), engine="host", **opts))(jnp.zeros_like(x), x).sum())(jnp.asarray(0.5)))
print(json.dumps(report))
'''


EARLY = EarlyRuns({"test_sharded_eager_failure_is_a_solve_error_on_two_devices":
                   two_device_jax_starter(SHARDED_FAILURES)})
start_early, stop_early = EARLY.start_early, EARLY.stop


def test_sharded_eager_failure_is_a_solve_error_on_two_devices():
    # README: "A failed solve raises dq.SolveError" (eagerly); sharded_fixed_point raised JAX's JaxRuntimeError
    # around it, since only fixed_point unwrapped the callback's error
    pytest.importorskip("jax")
    try:
        [run] = EARLY.runs("test_sharded_eager_failure_is_a_solve_error_on_two_devices")
        code, stdout, stderr = run.result(timeout=240)
    finally:
        EARLY.stop()
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    solve_error = "deqcore.results.SolveError"
    assert report["unsharded"][0] == solve_error, report          # the eager unsharded behaviour, for reference
    assert report["one_device_fails"][0] == solve_error and "2 of 4 samples" in report["one_device_fails"][1], report
    assert report["both_fail"][0] == solve_error, report
    assert report["nan_sample"][0] == solve_error and "DIVERGED" in report["nan_sample"][1], report
    # throw=False: the best iterates, the good samples at their fixed points, equal to the unsharded solve
    assert report["best_iterate"][0] == report["reference"][0] == "ok", report
    np.testing.assert_allclose(report["best_iterate"][1], report["reference"][1], rtol=0, atol=1e-14)
    good = np.array(report["best_iterate"][1][:2])
    np.testing.assert_allclose(good, 0.5 * np.cos(good) + np.array([0.0, 1 / 3]), atol=1e-10)
    assert report["odd_batch"][0] == "builtins.ValueError" and "z0 has a batch of 3 rows" in report["odd_batch"][1]
    assert report["short_arg"][0] == "builtins.ValueError" and "args leaf 0 is per-sample" in report["short_arg"][1]
    # after a reduction over the devices: under jit JAX's error carrying the message, eagerly the SolveError itself
    for name in ("jit_sum", "jit_grad"):
        assert report[name][0] == "jax.errors.JaxRuntimeError" and "2 of 4 samples" in report[name][1], report
    assert report["eager_grad"][0] == solve_error, report
    assert report["jit_grad_good"][0] == "ok", report          # a healthy batch: the unsharded gradient
    np.testing.assert_allclose(report["jit_grad_good"][1], report["grad_good_unsharded"][1], rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------- Dask

def test_dask_uneven_chunks_with_one_failing_chunk_keep_every_sample_s_code_and_value():
    da = pytest.importorskip("dask.array")
    import deqcore.dask as dqd

    # z = a z + x per row: a = 0.5 contracts, a = 3 (rows 5..8, exactly the third chunk) runs away
    chunks = (1, 4, 4, 2)
    a = np.full((11, 1), 0.5)
    a[5:9] = 3.0
    x = np.linspace(0.1, 1.1, 11)[:, None]
    fn = lambda z, a, x: a * z + x  # noqa: E731
    options = dict(solver=dq.FixedPointIteration(), atol=1e-12, rtol=0.0, max_steps=80)
    lazy = dqd.fixed_point(fn, da.zeros((11, 1), chunks=(chunks, (1,))),
                           args=(da.from_array(a, chunks=3), da.from_array(x, chunks=5)), **options)
    assert lazy.value.chunks[0] == chunks and lazy.num_chunks == 4
    sol = lazy.compute(scheduler="sync")
    ref = dq.fixed_point(fn, np.zeros((11, 1)), args=(a, x), batched=True, throw=False, **options)
    np.testing.assert_array_equal(sol.result, ref.result)
    np.testing.assert_array_equal(sol.value, ref.value)
    np.testing.assert_array_equal(sol.residual, ref.residual)
    assert (sol.result[5:9] != int(dq.ReturnCode.SUCCESS)).all() and sol.success[:5].all() and sol.success[9:].all()
    starts = np.cumsum((0,) + chunks)
    per_chunk = [dq.fixed_point(fn, np.zeros((b - s, 1)), args=(a[s:b], x[s:b]), batched=True, throw=False,
                                **options).stats for s, b in zip(starts[:-1], starts[1:])]
    assert sol.stats["nfev"] == sum(s["nfev"] for s in per_chunk) and sol.stats["num_chunks"] == 4


@pytest.mark.parametrize("method", ["Radau", "BDF"])
def test_dask_steady_state_refuses_an_unbatched_method_when_built_not_on_a_worker(method):
    # deqcore.dask checks a solve's options "before anything runs": an unbatched-only method passed every check and
    # failed on the workers at compute time, after the chunks had been scheduled
    pytest.importorskip("dask.array")
    import deqcore.dask as dqd

    with pytest.raises(ValueError, match=rf"solver=dq.{method}\(\) solves unbatched problems only"):
        dqd.steady_state(lambda t, z: -z, np.ones((4, 2)), getattr(dq, method)())
    final = dqd.integrate(lambda t, z: -z, np.ones((2, 2)), (0.0, 1.0), getattr(dq, method)(), atol=1e-10,
                          rtol=1e-10).compute(scheduler="sync")                 # (integrate solves row by row)
    np.testing.assert_allclose(final.value, np.exp(-1.0), rtol=1e-7)


# ------------------------------------------------------------------------------------------------- command line

def _exit_code_and_error(argv, capsys):
    from deqcore import cli

    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_demo_trains_a_single_epoch():
    # --epochs 1 is a positive integer, but the schedule's warm-up of one epoch equalled its total length and the
    # demo died with "warmup_steps (22) must be < total_steps (22)" once the data were loaded
    from deqcore import nn
    from deqcore.demos import digits

    rng = np.random.default_rng(0)
    data = (rng.random((20, 64)), rng.integers(0, 10, 20), rng.random((6, 64)), rng.integers(0, 10, 6))
    model = digits.build_classifier(4, dq.Anderson())
    params, _, history = digits.train(model, data, epochs=1, batch_size=64, progress=False)
    assert len(history["loss"]) == 1 and np.isfinite(nn.ravel(params)[0]).all()


def test_demo_names_an_output_folder_it_cannot_create_before_training(tmp_path, capsys):
    # the folder was created after training (a traceback minutes later); now a one-line usage error at once
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, line = _exit_code_and_error(["demo", "--epochs", "1", "--out", str(blocker / "plots")], capsys)
    assert code == 2 and line.startswith("python -m deqcore demo: error: --out"), line


@pytest.mark.parametrize("source, named", [("def fn(y) return y\n", "SyntaxError"), (None, "ImportError")],
                         ids=["syntax_error", "a_folder"])
def test_solve_file_that_cannot_be_run_is_a_one_line_error_naming_file(tmp_path, capsys, source, named):
    path = tmp_path
    if source is not None:
        path = tmp_path / "problem.py"
        path.write_text(source)
    code, line = _exit_code_and_error(["solve", "--file", str(path)], capsys)
    assert code == 2 and line.startswith("python -m deqcore solve: error: --file") and named in line, line


def test_solve_with_a_malformed_scheduler_address_is_a_one_line_error_naming_it(capsys):
    pytest.importorskip("distributed")
    code, line = _exit_code_and_error(["solve", "--batch", "4", "--width", "2", "--scheduler", "nonsense"], capsys)
    assert code == 2 and line.startswith("python -m deqcore solve: error: --scheduler 'nonsense'"), line
