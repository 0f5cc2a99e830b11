"""Subprocess work of a test, started as soon as the session has collected the test so that it runs while the
other tests do.

A serial test run keeps one core busy. A test that mostly waits on a subprocess (an interpreter that compiles
kernels to PTX, trains the demo, runs JAX on two devices) can have that subprocess started by conftest right
after collection, at a lower priority, on the core the run leaves idle, and collect its result when the test
runs. A test module opts in by defining ``start_early(selected_test_names)`` and ``stop_early()`` (see
conftest), usually through :class:`EarlyRuns`; run on its own, the test starts its subprocess itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile


def _lower_priority():
    os.nice(10)


class BackgroundRun:
    """One subprocess, its output in temporary files (a pipe nobody reads yet could fill and stall it), and
    optionally a temporary ``folder`` it writes into, removed by :meth:`stop`."""

    def __init__(self, args, folder=None, **popen_kwargs):
        self.folder = folder
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, text=True,
                                     preexec_fn=_lower_priority if os.name == "posix" else None, **popen_kwargs)

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
    ``name`` (a list of :class:`BackgroundRun`; ``early`` says whether the session starts them, while other
    tests run, or the test itself, with the machine to itself)."""

    def __init__(self, starters):
        self._starters = starters
        self._runs = {}

    def start_early(self, selected):
        for name in set(selected) & set(self._starters):
            self._start(name, early=True)

    def runs(self, name):
        """The runs of test ``name``, started now unless the session started them."""
        return self._start(name, early=False)

    def stop(self):
        while self._runs:
            for run in self._runs.popitem()[1]:
                run.stop()

    def _start(self, name, early):
        if name not in self._runs:
            self._runs[name] = self._starters[name](early)
        return self._runs[name]
