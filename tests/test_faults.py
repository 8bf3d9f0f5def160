"""Faults a night of training must survive: kills, signals, failed saves, divergence, dead workers."""
import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint
import cli
import pong_pg_fast
import training_run
from conftest import (
    PONG_PG,
    ROOT,
    all_gone_soon,
    children_of,
    copy_run,
    gone,
    log_rows,
    run,
    saved,
    start,
    wait_for_rows,
    workers_of,
)
from stopping import Stop


def test_sigterm_saves_stops_workers_and_exits_143(tmp_path):
    proc = start("--workers", 2, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 2)
    children = children_of(proc.pid)
    workers = workers_of(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in out
    assert saved(tmp_path)["episode"] == len(log_rows(tmp_path))
    assert len(workers) == 2 and all(gone(pid) for pid in workers)     # joined before the trainer exits
    assert all_gone_soon(children)                                       # the resource tracker follows


def test_sigkill_at_random_moments_and_inside_saves_loses_nothing(tmp_path):
    """12 SIGKILLs of the trainer: at random times, and right after a save has begun (its temporary
    file exists). After each, the checkpoint loads; at the end, --resume continues with a clean log."""
    rng = random.Random(0)
    inside_a_save = 0
    for kill in range(12):
        proc = start(*(["--resume"] if kill else []), "--batch-size", 1, "--save-every", 1,
                     "--workers", 2, "--quiet", "--checkpoint-dir", tmp_path)
        if kill % 2:                                   # wait for a save to begin, then kill it
            deadline = time.time() + 60
            while time.time() < deadline and not any(name.startswith(checkpoint.TEMPORARY_PREFIX)
                                                     for name in os.listdir(tmp_path)):
                time.sleep(0.001)                      # (a busy loop would take a core from the trainer)
        else:
            time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()
        proc.wait()
        inside_a_save += any(name.startswith(checkpoint.TEMPORARY_PREFIX) for name in os.listdir(tmp_path))
        training_run.load_state(tmp_path / "pong_pg.pkl")   # always loads, whole
    assert inside_a_save >= 2, "too few kills landed inside a save to prove anything"

    before = saved(tmp_path)["episode"]
    final = run("--resume", "--episodes", 2, "--batch-size", 1, "--checkpoint-dir", tmp_path)
    assert final.returncode == 0, final.stderr
    state = saved(tmp_path)
    assert state["episode"] == before + 2
    rows = log_rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == list(range(1, state["episode"] + 1))   # no torn, no twice
    assert all(None not in r.values() and "" not in r.values() for r in rows)
    assert state["total_steps"] == sum(int(r["steps"]) for r in rows)
    assert not any(name.startswith(checkpoint.TEMPORARY_PREFIX) for name in os.listdir(tmp_path))


def test_a_failing_save_keeps_the_previous_checkpoint_and_training_goes_on(tmp_path, one_episode_run, monkeypatch,
                                                                          capsys):
    copy_run(one_episode_run, tmp_path)
    good = (tmp_path / "pong_pg.pkl").read_bytes()
    real_fsync, calls = os.fsync, []

    def disk_full_three_times(fd):                    # the first three saves fail half-way, disk full
        if checkpoint.TEMPORARY_PREFIX not in os.readlink(f"/proc/self/fd/{fd}"):
            return real_fsync(fd)                      # the log's, or the directory's
        calls.append(fd)
        if len(calls) <= 3:
            assert (tmp_path / "pong_pg.pkl").read_bytes() == good
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(checkpoint.os, "fsync", disk_full_three_times)
    cli.main(["--resume", "--episodes", "5", "--batch-size", "1", "--save-every", "1", "--workers", "1",
                  "--checkpoint-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert err.count("could not save the checkpoint") == 1                       # said once, with the reason
    assert "could not save the checkpoint (No space left on device); " in err and "still holds episode 1" in err
    assert "at episode 5 (every 1 episodes; 3 save(s) had failed)" in out        # the fourth save went through
    assert saved(tmp_path)["episode"] == 6                                        # and the final one
    assert not [name for name in os.listdir(tmp_path) if name.startswith(checkpoint.TEMPORARY_PREFIX)]


def no_space_for_checkpoints(monkeypatch):
    def full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "save", full)


FINAL_LINE = ("pong_pg: error: the final checkpoint could not be saved (No space left on device): {path} holds "
              "episode 1, the {lost} episode(s) since are lost; once the disk has room, python pong_pg.py "
              "--resume continues from episode 1\n")


def test_a_failing_final_save_says_what_is_kept_and_exits_75(tmp_path, one_episode_run, monkeypatch, capsys):
    copy_run(one_episode_run, tmp_path)
    good = (tmp_path / "pong_pg.pkl").read_bytes()
    no_space_for_checkpoints(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--resume", "--episodes", "3", "--batch-size", "1", "--save-every", "1", "--workers", "1",
                      "--checkpoint-dir", str(tmp_path)])
    assert exit_.value.code == training_run.EXIT_LAST_CHECKPOINT_KEPT == 75
    err = capsys.readouterr().err
    assert err.count("could not save the checkpoint") == 1
    assert err.endswith(FINAL_LINE.format(path=tmp_path / "pong_pg.pkl", lost=3))
    assert (tmp_path / "pong_pg.pkl").read_bytes() == good


def test_a_stop_whose_final_save_fails_says_so_once_and_exits_75(tmp_path, one_episode_run, monkeypatch, capsys):
    """SIGTERM after a few episodes, the disk full all along: one warning while training, one line at
    the stop (not "trying again"), exit 75; --resume once there is room continues from episode 1."""
    copy_run(one_episode_run, tmp_path)
    no_space_for_checkpoints(monkeypatch)
    monkeypatch.setattr(Stop, "signum", None)           # restored when the test ends: later tests start unstopped
    real_count = training_run.Run.episode_done

    def count_then_stop(run, episode):
        real_count(run, episode)
        if run.state.episode == 4:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(training_run.Run, "episode_done", count_then_stop)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--resume", "--batch-size", "1", "--save-every", "1", "--workers", "1",
                      "--checkpoint-dir", str(tmp_path)])
    assert exit_.value.code == 75
    err = capsys.readouterr().err
    assert err.count("could not save the checkpoint") == 1 and "trying again" not in err
    assert err.endswith(FINAL_LINE.format(path=tmp_path / "pong_pg.pkl", lost=3))
    monkeypatch.undo()
    resumed = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "from episode 2" in resumed.stdout
    assert [int(r["episode"]) for r in log_rows(tmp_path)] == [1, 2]                # the log trimmed to match


@pytest.mark.parametrize("output", ["a full disk", "a closed pipe"])
def test_output_that_cannot_be_written_never_ends_training(tmp_path, output):
    """stdout and stderr on /dev/full (every write: No space left on device), or a pipe whose reader
    has gone: training runs to its end, saves, exits 0."""
    command = [sys.executable, PONG_PG, "--episodes", "3", "--batch-size", "1", "--save-every", "1",
               "--workers", "1", "--checkpoint-dir", str(tmp_path)]
    if output == "a full disk":
        with open("/dev/full", "w") as full:
            returncode = subprocess.run(command, stdout=full, stderr=full, timeout=240, cwd=ROOT).returncode
    else:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        proc.stdout.close()                            # the reader goes away before the first line
        returncode = proc.wait(timeout=240)
    assert returncode == 0
    assert saved(tmp_path)["episode"] == 3 and len(log_rows(tmp_path)) == 3


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("poison", ["model", "cache", "gradient"])
def test_non_finite_numbers_stop_training_and_keep_the_last_good_checkpoint(tmp_path, one_episode_run, monkeypatch,
                                                                          capsys, poison):
    copy_run(one_episode_run, tmp_path)
    good = (tmp_path / "pong_pg.pkl").read_bytes()
    real_step = pong_pg_fast.rmsprop_rows

    def poisoned_step(W, cache, g, *args):          # the first RMSProp step of an update (W2's) goes wrong
        if poison == "gradient":
            g = g.copy()
            g.flat[0] = np.inf
        real_step(W, cache, g, *args)
        if poison != "gradient":
            {"model": W, "cache": cache}[poison].flat[3] = np.nan
    monkeypatch.setattr(pong_pg_fast, "rmsprop_rows", poisoned_step)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--resume", "--episodes", "4", "--batch-size", "1", "--save-every", "1", "--workers", "1",
                      "--checkpoint-dir", str(tmp_path)])
    assert exit_.value.code == 1
    assert "training diverged" in capsys.readouterr().err
    assert (tmp_path / "pong_pg.pkl").read_bytes() == good


def test_a_crashed_worker_is_reported_not_a_hang(tmp_path):
    proc = start("--workers", 2, "--checkpoint-dir", tmp_path)
    wait_for_rows(tmp_path, 2)
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "worker 0 died" in err and "Traceback" not in err
    assert saved(tmp_path)["episode"] == len(log_rows(tmp_path))
    assert all(gone(pid) for pid in workers)


def test_resume_never_runs_code_from_a_hostile_checkpoint(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    content = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "state": Payload()}
    (tmp_path / "pong_pg.pkl").write_bytes(pickle.dumps(content))
    result = run("--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 1
    assert "refusing to load" in result.stderr and "os.system" in result.stderr.replace("posix.system", "os.system")
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_format_version_is_refused(tmp_path, one_episode_run):
    copy_run(one_episode_run, tmp_path)
    state = checkpoint.load(tmp_path / "pong_pg.pkl")
    import pickle
    (tmp_path / "pong_pg.pkl").write_bytes(pickle.dumps({"format": checkpoint.FORMAT, "version": 0,
                                                         "state": checkpoint._encode(state)}))
    result = run("--resume", "--episodes", 1, "--checkpoint-dir", tmp_path)
    assert result.returncode == 1 and "format version 0" in result.stderr


def failing_log_writes(monkeypatch, fails):
    """os.write to log.csv fails with 'No space left on device' while fails() says so; the first
    failure writes half of the data first, as a disk that fills up mid-write does."""
    real_write, calls = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("log.csv") and fails():
            calls.append(len(data))
            if len(calls) == 1:
                real_write(fd, data[:len(data) // 2])
                return len(data) // 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", write)
    return calls


def test_a_failing_log_write_never_stops_training_and_loses_no_row(tmp_path, one_episode_run, monkeypatch,
                                                                  capsys):
    copy_run(one_episode_run, tmp_path)
    calls = failing_log_writes(monkeypatch, fails=lambda: len(calls) < 3)     # rows 2 and 3 wait
    cli.main(["--resume", "--episodes", "4", "--batch-size", "1", "--save-every", "1", "--workers", "1",
                  "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert len(calls) == 3 and "Traceback" not in err
    assert err.count("could not write to") == 1 and err.count("written again, no row lost") == 1
    state = saved(tmp_path)
    assert state["episode"] == 5 and not state["log_pending"]
    assert [int(r["episode"]) for r in log_rows(tmp_path)] == [1, 2, 3, 4, 5]       # whole, no torn row
    assert (tmp_path / "log.csv").read_text().count("\n") == 6


def test_log_rows_the_disk_did_not_take_are_kept_in_the_checkpoint(tmp_path, one_episode_run, monkeypatch):
    """The disk stays full to the end: the rows wait in the checkpoint, and --resume writes them."""
    copy_run(one_episode_run, tmp_path)
    failing_log_writes(monkeypatch, fails=lambda: True)
    cli.main(["--resume", "--episodes", "2", "--batch-size", "1", "--workers", "1",
                  "--checkpoint-dir", str(tmp_path)])
    monkeypatch.undo()
    assert len(log_rows(tmp_path)) == 1 and len(saved(tmp_path)["log_pending"]) == 2
    resumed = run("--resume", "--episodes", 1, "--workers", 1, "--checkpoint-dir", tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    state = saved(tmp_path)
    rows = log_rows(tmp_path)
    assert [int(r["episode"]) for r in rows] == [1, 2, 3, 4] == list(range(1, state["episode"] + 1))
    assert state["total_steps"] == sum(int(r["steps"]) for r in rows)
