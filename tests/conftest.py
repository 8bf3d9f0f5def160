"""Shared fixtures and helpers: a real game of Pong, and the trainer run as a user runs it."""
import csv
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import checkpoint
from pong_pg import DOWN, UP, init_model
from pong_pg_fast import play_weights
from preprocess import dense_difference, difference_values, preprocess, sparse_difference
from workers import make_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PONG_PG = os.path.join(ROOT, "pong_pg.py")

# ---------------------------------------------------------------- a real game

@pytest.fixture(scope="session")
def real_game():
    """The first 400 steps of a real ALE/Pong-v5 game with random UP/DOWN actions: the RGB frames and
    ALE's palette-index screens of the same steps."""
    env = make_env(obs_type="rgb")
    obs, _ = env.reset(seed=123)
    rng = np.random.default_rng(0)
    frames, screens = [obs], [env.unwrapped.ale.getScreen()]
    for _ in range(400):
        obs, _, terminated, truncated, _ = env.step(UP if rng.random() < 0.5 else DOWN)
        frames.append(obs)
        screens.append(env.unwrapped.ale.getScreen())
        assert not (terminated or truncated)
    env.close()
    return frames, screens


@pytest.fixture(scope="session")
def real_frames(real_game):
    return real_game[0]


@pytest.fixture(scope="session")
def real_steps(real_frames):
    """The same game as the policy sees it: sparse CSR frames and the dense (T, 6400) matrix."""
    counts, idxs, vals, dense = [], [], [], []
    previous = None
    for frame in real_frames:
        current = preprocess(frame)
        idx, on = sparse_difference(current, previous)
        dense.append(dense_difference(current, previous))
        idxs.append(idx.astype(np.int16))
        vals.append(difference_values(on).astype(np.int8))
        counts.append(len(idx))
        previous = current
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return (indptr, np.concatenate(idxs), np.concatenate(vals)), np.array(dense)


def random_weights(seed, hidden=200):
    """play_weights() of a freshly initialised network."""
    return play_weights(init_model(hidden, np.random.default_rng(seed)))


# ---------------------------------------------------------------- the trainer, as a user runs it

def run(*args, timeout=240, **kwargs):
    """python pong_pg.py ARGS to the end; its CompletedProcess (text stdout and stderr)."""
    return subprocess.run([sys.executable, PONG_PG, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kwargs)


def start(*args, **kwargs):
    """python pong_pg.py ARGS in the background; its Popen."""
    return subprocess.Popen([sys.executable, PONG_PG, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kwargs)


@pytest.fixture(scope="session")
def one_episode_run(tmp_path_factory):
    """A run of one episode (1 worker, seed 0); tests copy it with copy_run rather than change it."""
    directory = tmp_path_factory.mktemp("one_episode_run")
    result = run("--episodes", 1, "--workers", 1, "--checkpoint-dir", directory)
    assert result.returncode == 0, result.stderr
    return directory


def copy_run(source, destination):
    """The checkpoint and the log of the run in source, copied into destination."""
    os.makedirs(destination, exist_ok=True)
    for name in ("pong_pg.pkl", "log.csv"):
        shutil.copy(os.path.join(source, name), os.path.join(destination, name))
    return destination


def log_rows(directory):
    with open(os.path.join(directory, "log.csv")) as f:
        return list(csv.DictReader(f))


def saved(directory):
    return checkpoint.load(os.path.join(directory, "pong_pg.pkl"))


def wait_for_rows(directory, n, timeout=120):
    """Wait until the run in directory has logged n episodes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(os.path.join(directory, "log.csv")) and len(log_rows(directory)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} episodes within {timeout} s")


def children_of(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def workers_of(pid):
    """The worker processes of trainer pid: its children less multiprocessing's resource tracker."""
    workers = []
    for child in children_of(pid):
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"resource_tracker" not in f.read():
                workers.append(child)
    return workers


def within(timeout, condition):
    """Whether condition() becomes true within timeout seconds (checked every 20 ms)."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def all_gone_soon(pids, timeout=10):
    """Whether every process in pids ends within timeout seconds. multiprocessing's resource tracker
    ends only once it reads the end of its pipe, after the trainer itself has exited."""
    return within(timeout, lambda: all(gone(pid) for pid in pids))


def gone(pid):
    """Whether process pid has ended (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
