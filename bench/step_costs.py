"""Where the time of one agent step goes, beside the emulator's own.

  1. the worker's loop in one process, built up piece by piece (each line adds one piece to the one
     above; the differences are the pieces' costs, cache misses included),
  2. a real training run: the CPU time of the learner and of each worker per agent step, from /proc.

    python bench/step_costs.py [--steps N] [--seconds S]

Machines are noisy: the pieces are differences of ~220 us per step; repeat and compare.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"          # as in the workers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np

from pong_pg import DOWN, UP, init_model, play_episode, play_weights, policy_forward_sparse
from preprocess import COLORS, D, difference_values, learn_colors, screen_difference, screen_pixels
from throughput import children_by_parent
from workers import make_env

PIECES = ["the emulator (env.step, random UP/DOWN)", "+ read the palette screen", "+ downsample it to 80x80",
          "+ the sparse difference frame", "+ the sparse forward pass", "+ keep the step", "play_episode itself"]


def worker_loop(env, weights, steps, pieces):
    """Microseconds per step of play with the first `pieces` pieces of play_episode's loop."""
    if pieces == len(PIECES) - 1:
        rng, played, start = np.random.default_rng(0), 0, time.perf_counter()
        while played < steps:
            played += play_episode(env, weights, rng).steps
        return 1e6 * (time.perf_counter() - start) / played
    rng, ale = np.random.default_rng(0), env.unwrapped.ale
    screen, pixels, previous = np.empty((210, 160), np.uint8), np.empty(D, np.uint8), np.empty(D, np.uint8)
    played, start = 0, time.perf_counter()
    while played < steps:
        env.reset()
        ale.getScreen(screen)
        screen_pixels(screen, previous)
        learn_colors(COLORS, previous, screen, ale.getScreenRGB)
        kept, done = [], False
        while not done:
            p_up = 0.5
            if pieces >= 1:
                ale.getScreen(screen)
            if pieces >= 2:
                screen_pixels(screen, pixels)
            if pieces >= 3:
                idx, on = screen_difference(pixels, previous, COLORS, screen, ale.getScreenRGB)
                pixels, previous = previous, pixels
            if pieces >= 4:
                p_up = policy_forward_sparse(weights["W1T"], weights["W2"], idx, difference_values(on))
            up = rng.random() < p_up
            _, reward, terminated, truncated, _ = env.step(UP if up else DOWN)
            if pieces >= 5:
                kept.append((idx, on, up, reward))
            played += 1
            done = terminated or truncated
    return 1e6 * (time.perf_counter() - start) / played


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def training_run(seconds):
    """CPU microseconds per agent step of each process of `pong_pg.py` over `seconds` of training."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.csv")
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet",
                                 "--checkpoint-dir", tmp], cwd=ROOT, stdout=subprocess.DEVNULL)
        while not (os.path.exists(log) and os.path.getsize(log) > 80):    # the first episode is in
            time.sleep(0.05)
        workers = [pid for pid in children_by_parent().get(proc.pid, [])   # (not multiprocessing's tracker)
                   if b"resource_tracker" not in read_bytes(f"/proc/{pid}/cmdline")]
        pids = [proc.pid] + workers
        steps_before = np.loadtxt(log, delimiter=",", skiprows=1, ndmin=2)[-1, 4]
        before, start = [cpu_seconds(p) for p in pids], time.time()
        time.sleep(seconds)
        after, wall = [cpu_seconds(p) for p in pids], time.time() - start
        steps = np.loadtxt(log, delimiter=",", skiprows=1, ndmin=2)[-1, 4] - steps_before
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    return steps, wall, [(pid, 1e6 * (a - b) / steps) for pid, a, b in zip(pids, after, before, strict=True)]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="steps per piece (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=40, help="length of the training run (default: %(default)s)")
    args = ap.parse_args()

    env = make_env()
    env.reset(seed=0)
    weights = play_weights(init_model(200, np.random.default_rng(0)))
    print("1. the worker's loop, one process, us per step:")
    for pieces, name in enumerate(PIECES):
        print(f"   {name:42s} {worker_loop(env, weights, args.steps, pieces):6.1f}", flush=True)
    env.close()

    steps, wall, costs = training_run(args.seconds)
    print(f"\n2. pong_pg.py, {steps / wall:,.0f} steps/s over {wall:.0f} s; CPU us per agent step (all steps):")
    for i, (_pid, us) in enumerate(costs):
        print(f"   {'learner' if i == 0 else f'worker {i - 1}':10s} {us:6.1f}")
    cores = len(os.sched_getaffinity(0))
    print(f"   {'total':10s} {sum(us for _, us in costs):6.1f}   ({cores} cores x wall time per step: "
          f"{cores * 1e6 * wall / steps:.1f})")


if __name__ == "__main__":
    main()
