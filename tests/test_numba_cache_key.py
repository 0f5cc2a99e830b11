"""Numba's cache is kept per digest of deqcore's sources: a compiled loop inlining a helper from another module
(which Numba's own check, the defining file's time stamp, does not see) is recompiled when that helper changes."""

import os
import re
import shutil
import subprocess
import sys

from deqcore.backend import numba_tools


def _copy_package(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(numba_tools.__file__)))
    copy = tmp_path / "deqcore"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_key_follows_a_helper_modules_content_not_its_time_stamp(tmp_path):
    copy = _copy_package(tmp_path)
    key = numba_tools.sources_key(str(copy))
    assert key == numba_tools.sources_key()                    # the same sources, the same key
    helper = copy / "ode" / "controller.py"
    os.utime(helper, (0, 0))
    assert numba_tools.sources_key(str(copy)) == key           # a checkout's new time stamps recompile nothing
    helper.write_text(helper.read_text() + "\n# edited\n")
    assert numba_tools.sources_key(str(copy)) != key           # an edit anywhere recompiles everything


def test_numba_caches_under_the_keyed_folder_also_for_a_callers_folder_and_a_child_process(tmp_path):
    # (checked in child processes: numba's configuration is the process's, and a benchmark may import a second
    # deqcore package beside this one, with its own key)
    assert re.fullmatch(r"src-[0-9a-f]{16}", os.path.basename(numba_tools.CACHE_DIR))   # (the sources at import)
    code = ("import numba, os; from deqcore.backend import numba_tools as n; "
            "print(n.CACHE_DIR); print(numba.config.CACHE_DIR)")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    keyed = str(tmp_path / os.path.basename(numba_tools.CACHE_DIR))
    assert out.stdout.split() == [keyed, keyed]                 # numba imported first: still the keyed folder
    env["NUMBA_CACHE_DIR"] = keyed                              # a child inherits the keyed folder itself
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [keyed, keyed]


def test_other_keys_folders_are_pruned_only_when_stale(tmp_path):
    fresh, stale, other = tmp_path / "src-fresh", tmp_path / "src-stale", tmp_path / "not-ours"
    for folder in (fresh, stale, other):
        folder.mkdir()
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    numba_tools._prune_stale(str(tmp_path), "src-current")
    assert fresh.exists() and other.exists() and not stale.exists()
