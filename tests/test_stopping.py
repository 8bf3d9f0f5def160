"""Every way a run can be stopped: Ctrl-C from a terminal at any moment of start-up, a closed terminal
(SIGHUP), a second trainer on the same directory, kill -9. Real processes, the real emulator."""
import os
import signal
import subprocess
import sys
import time

import pytest

import training_run
from conftest import (
    all_gone_soon,
    children_of,
    copy_run,
    gone,
    log_rows,
    run,
    saved,
    start,
    wait_for_rows,
    within,
    workers_of,
)

PROGRESS = ("A.L.E: Arcade Learning Environment", "[Powered by Stella]",      # each emulator's banner
            "training with", "episode ", "update ", "evaluating over", "eval ", "agent ", "recording:")


def default_signals():
    """In the child: SIGINT and SIGHUP at their defaults, as in a process a terminal starts (a shell
    script's `&` would ignore SIGINT, and such a test would never see the problem)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start_in_terminal(*args):
    """The trainer in a process group of its own, as a terminal starts a foreground command."""
    return start(*args, start_new_session=True, preexec_fn=default_signals)


def catches_stop_signals(pid):
    """Whether the script's own handlers are in place (SIGTERM is caught: bit 15 of SigCgt). Python's
    startup before the script's first line is the interpreter's, out of any script's reach."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, StopIteration):
        return True                                  # it has ended already
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def running_in_group(pgid):
    """The processes of group pgid that are still running (zombies waiting to be reaped are not)."""
    running = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            running.append(int(entry))
    return running


def group_is_gone(pgid, timeout=10):
    return within(timeout, lambda: not running_in_group(pgid))


def ctrl_c_after(delay, *args):
    """Start pong_pg.py ARGS as a terminal would, press Ctrl-C `delay` seconds after the script's
    first line ran (SIGINT to the whole process group); the finished process, its stdout and stderr."""
    proc = start_in_terminal(*args)
    while not catches_stop_signals(proc.pid):
        time.sleep(0.002)
    time.sleep(delay)
    assert proc.poll() is None, "it ended before the Ctrl-C: the test must give it more to do"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc, out, err


def assert_clean_stop(proc, out, err, code=130):
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in out + err, err
    # blank lines are left out: each emulator writes its banner, then its last newline in a write of
    # its own, so two workers starting at once can leave an empty line between their banners
    about_the_stop = [line for line in (out + err).splitlines() if line and not line.startswith(PROGRESS)]
    assert len(about_the_stop) <= 1, about_the_stop  # at most "saved ... (stopped by SIGINT)"
    assert group_is_gone(proc.pid), "a process of the group is still running"


DELAYS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.37, 0.45, 0.55, 0.7, 0.85,
          1.0, 1.25, 1.5]


def test_ctrl_c_at_any_moment_of_start_up_is_a_clean_stop(tmp_path):
    """20 interruptions spread over start-up (modules loading, the directory prepared, workers spawning
    and importing, the first episode): exit 130, no traceback, nothing left running, and the run in
    a consistent state that --resume continues."""
    with_checkpoint = []
    for i, delay in enumerate(DELAYS):
        directory = tmp_path / f"run{i}"
        proc, out, err = ctrl_c_after(delay, "--workers", 2, "--checkpoint-dir", directory)
        assert_clean_stop(proc, out, err)
        if (directory / "pong_pg.pkl").exists():
            state = training_run.load_state(directory / "pong_pg.pkl")     # what --resume reads first
            assert state.episode == len(log_rows(directory))
            with_checkpoint.append(directory)
    assert with_checkpoint, "no stop came late enough to leave a checkpoint"
    resumed = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", with_checkpoint[0])
    assert resumed.returncode == 0, resumed.stderr                      # the earliest stop that saved
    assert saved(with_checkpoint[0])["episode"] == len(log_rows(with_checkpoint[0]))


@pytest.mark.parametrize("mode", ["--eval", "--record"])
def test_ctrl_c_while_watching_starts_is_a_clean_stop(tmp_path, mode):
    """The shipped agent (an empty --checkpoint-dir falls back to it) plays long games, so the Ctrl-C
    comes before the work ends even on a fast machine."""
    flags = {"--eval": ["--eval", 20, "--workers", 2], "--record": ["--record", tmp_path / "game.mp4"]}[mode]
    for delay in (0.0, 0.1, 0.3, 0.6, 1.0):
        proc, out, err = ctrl_c_after(delay, *flags, "--checkpoint-dir", tmp_path / "empty")
        assert_clean_stop(proc, out, err)
        assert not [name for name in os.listdir(tmp_path) if name != "game.mp4"], "a half-written video"


SPAWN_WITH_A_CTRL_C = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import pong_pg_fast                                    # as the trainer: one BLAS thread, no other threads
import multiprocessing.context, workers
real_start = multiprocessing.context.SpawnProcess.start
def start_after_a_ctrl_c(process):
    os.kill(os.getpid(), signal.SIGINT)                # lands exactly while the pool is spawning
    real_start(process)
multiprocessing.context.SpawnProcess.start = start_after_a_ctrl_c
caught = []
signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
with workers.WorkerPool(1, pong_pg_fast.play_episode, 0, 0):
    time.sleep(0.1)                                    # Python runs a handler between bytecodes
print("caught", caught)
"""


def test_a_ctrl_c_while_the_workers_are_spawned_is_not_lost():
    """The learner ignores SIGINT while it spawns the workers (so that they start ignoring it); a
    Ctrl-C arriving just then must still reach the learner's handler afterwards, in a process with
    the trainer's threads (only the main one)."""
    result = subprocess.run([sys.executable, "-c", SPAWN_WITH_A_CTRL_C, os.path.dirname(training_run.__file__)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"caught [{int(signal.SIGINT)}]" in result.stdout or "caught [<Signals.SIGINT: 2>]" in result.stdout


def test_a_closed_terminal_saves_and_stops_the_workers(tmp_path):
    """SIGHUP to the process group, as when the terminal or SSH connection closes."""
    proc = start_in_terminal("--workers", 2, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 2)
    children = children_of(proc.pid)
    workers = workers_of(proc.pid)
    os.killpg(proc.pid, signal.SIGHUP)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "stopped by SIGHUP" in out and "Traceback" not in err
    assert saved(tmp_path)["episode"] == len(log_rows(tmp_path))        # the log and checkpoint agree
    assert len(workers) == 2 and all(gone(pid) for pid in workers)     # joined before the trainer exits
    assert all_gone_soon(children)                                       # the resource tracker follows


def test_a_second_trainer_is_refused_while_the_first_trains_and_the_log_stays_whole(tmp_path):
    first = start("--workers", 1, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 2)
    for flags in (["--resume"], []):                 # continuing it, or a new run over it
        second = run(*flags, "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"pong_pg: error: {tmp_path} is in use by another trainer (pid "
                                         f"{first.pid}): stop it first, or train in another --checkpoint-dir")
    watching = run("--eval", 1, "--workers", 1, "--checkpoint-dir", tmp_path)    # reading is fine
    assert watching.returncode == 0 and "greedy policy: mean score" in watching.stdout
    rows_then = len(log_rows(tmp_path))
    wait_for_rows(tmp_path, rows_then + 1)           # the first trainer goes on, its log untouched
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    state = saved(tmp_path)
    assert [int(r["episode"]) for r in log_rows(tmp_path)] == list(range(1, state["episode"] + 1))


def test_kill_9_releases_the_directory(tmp_path, one_episode_run):
    copy_run(one_episode_run, tmp_path)
    proc = start("--resume", "--workers", 1, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 2)
    proc.kill()
    proc.wait()
    resumed = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert saved(tmp_path)["episode"] == len(log_rows(tmp_path))
