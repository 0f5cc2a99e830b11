"""Subprocess work of a test, started as soon as pytest has collected the test so that it runs while the
other tests do.

A serial test run keeps one core busy. A test that mostly waits on a subprocess (an interpreter that compiles
kernels to PTX, trains the demo, runs JAX on two devices) can have that subprocess started by conftest right
after collection and collect its result when the test runs. The early runs start one after another (one
beside the tests at a time, on the core the run leaves idle); a test reached before its run's turn starts it
at once. A test module opts in by defining ``start_early(selected_test_names)`` and ``stop_early()`` (see
conftest), through :class:`EarlyRuns`; run on its own, the test starts its subprocess itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading

_LOCK = threading.Lock()
_PENDING = []           # (EarlyRuns, test name) waiting for their turn, in the test order
_SERVER = []            # the thread starting them in turn, while it runs


class BackgroundRun:
    """One subprocess, its output in temporary files (a pipe nobody reads yet could fill and stall it), and
    optionally a temporary ``folder`` it writes into, removed by :meth:`stop`."""

    def __init__(self, args, folder=None, **popen_kwargs):
        self.folder = folder
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, text=True, **popen_kwargs)

    def result(self, timeout):
        """(exit status, stdout, stderr) once the process has ended (``subprocess.TimeoutExpired`` after
        ``timeout`` seconds)."""
        self.proc.wait(timeout=timeout)
        self._out.seek(0)
        self._err.seek(0)
        return self.proc.returncode, self._out.read(), self._err.read()

    def stop(self):
        """End the process if it still runs, close its files and remove its folder."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()
        self._err.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class EarlyRuns:
    """A test module's background runs by test name. ``starters[name](early)`` starts the runs of test
    ``name`` (a list of :class:`BackgroundRun`; ``early`` says whether they start once the tests are
    collected, while other tests run, or when the test itself asks, with the machine to itself)."""

    def __init__(self, starters):
        self._starters = starters
        self._runs = {}

    def start_early(self, selected):
        """Queue the runs of the selected tests (``selected``: test names) behind the other early runs."""
        with _LOCK:
            _PENDING.extend((self, name) for name in self._starters if name in set(selected))
            if _PENDING and not _SERVER:
                _SERVER.append(threading.Thread(target=_serve, daemon=True))
                _SERVER[0].start()

    def runs(self, name):
        """The runs of test ``name``: those started early, else started now (out of turn if still queued)."""
        with _LOCK:
            if (self, name) in _PENDING:
                _PENDING.remove((self, name))
            return self._start(name, early=False)

    def stop(self):
        """End this module's runs and drop those still queued."""
        with _LOCK:
            _PENDING[:] = [entry for entry in _PENDING if entry[0] is not self]
            runs = [run for name_runs in self._runs.values() for run in name_runs]
            self._runs.clear()
        for run in runs:
            run.stop()

    def _start(self, name, early):
        if name not in self._runs:
            self._runs[name] = self._starters[name](early)
        return self._runs[name]


def two_device_jax_starter(script):
    """An :class:`EarlyRuns` starter running ``script`` in a Python subprocess with two XLA host devices (the flag
    must be set before JAX starts, hence the subprocess)."""
    def start(early):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
        return [BackgroundRun([sys.executable, "-c", script], env=env)]

    return start


def _serve():
    """Start the queued runs one test at a time, each when the previous one has ended."""
    while True:
        with _LOCK:
            if not _PENDING:
                _SERVER.clear()
                return
            owner, name = _PENDING.pop(0)
            runs = owner._start(name, early=True)
        for run in runs:
            run.proc.wait()
