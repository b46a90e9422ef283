"""icv_deploy.atomic under a real SIGKILL: the previous contents survive any kill point, and the next write to the
same path puts back a folder moved aside (`.NAME.old`) and removes the temporaries of writers that died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from icv_deploy import atomic

# Replace a folder, SIGKILLing this process right after os.replace call number argv[2] (1: between atomic_dir's two
# renames, 2: after both, before the old contents are removed).
KILLED_DIR_WRITER = """
import os, signal, sys
from icv_deploy import atomic

calls, real_replace = [], os.replace

def replace(src, dst):
    real_replace(src, dst)
    calls.append(dst)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
with atomic.atomic_dir(sys.argv[1]) as tmp:
    (tmp / "value").write_text("new")
"""

# Write half a file through atomic_path, then die.
KILLED_FILE_WRITER = """
import os, signal, sys
from icv_deploy import atomic

with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half of the new cont")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed(script: str, *args) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_killed_between_the_two_renames_the_next_write_puts_the_old_folder_back(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "value").write_text("old")
    killed(KILLED_DIR_WRITER, final, 1)
    assert not final.exists() and (tmp_path / ".model.old" / "value").read_text() == "old"  # the crash window
    assert len(leftovers(tmp_path)) == 2  # .model.old and the dead writer's temporary (holding "new")

    atomic.recover_dir(final)  # what every atomic_dir(final) does first
    assert (final / "value").read_text() == "old" and leftovers(tmp_path) == []
    with atomic.atomic_dir(final) as tmp:
        (tmp / "value").write_text("newer")
    assert (final / "value").read_text() == "newer" and leftovers(tmp_path) == []


def test_killed_after_both_renames_the_next_write_removes_the_old_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "value").write_text("old")
    killed(KILLED_DIR_WRITER, final, 2)
    assert (final / "value").read_text() == "new" and leftovers(tmp_path) == [".model.old"]
    with atomic.atomic_dir(final) as tmp:
        (tmp / "value").write_text("newer")
    assert (final / "value").read_text() == "newer" and leftovers(tmp_path) == []


def test_killed_file_writer_leaves_the_old_file_and_its_temporary_is_removed_next_time(tmp_path):
    final = tmp_path / "metrics.json"
    final.write_text("old")
    killed(KILLED_FILE_WRITER, final)
    assert final.read_text() == "old" and len(leftovers(tmp_path)) == 1
    atomic.write_text(final, "new")
    assert final.read_text() == "new" and leftovers(tmp_path) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    final = tmp_path / "plan"
    mine = tmp_path / f".plan.{atomic._writer_tag()}.abc.tmp"  # this process: alive
    mine.write_text("being written")
    assert atomic.remove_stale_temps(final) == [] and mine.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to make a process id that has ended")
def test_only_temporaries_of_this_path_are_removed(tmp_path):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # `pid` has ended: its temporaries are stale
    host = atomic._writer_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".plan.{host}-{pid}.abc.tmp"
    other = tmp_path / f".plan2.{host}-{pid}.abc.tmp"
    stale.write_text("x")
    other.write_text("x")
    assert atomic.remove_stale_temps(tmp_path / "plan") == [stale]
    assert other.exists()
