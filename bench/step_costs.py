"""Where the time of one agent step goes, beside the emulator's own.

  1. a worker's loop in one process, each piece of an agent step timed inside the loop (so with the
     cache misses the emulator leaves it), and play_for_batch as a whole beside them,
  2. real training runs with 2, 16 and 64 workers: the CPU time of the learner and of the workers per
     agent step, from /proc, and the memory of all the processes.

    python bench/step_costs.py [--steps N] [--seconds S] [--workers 2,16,64] [--init-from FILE] [--skip-loop]

Machines are noisy: repeat and compare.
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

from pong_pg import (
    DICE_AT_ONCE,
    DOWN,
    UP,
    compact_episode,
    episode_sums,
    init_model,
    play_for_batch,
    play_weights,
    policy_forward_sparse,
)
from preprocess import COLORS, D, difference_values, learn_colors, screen_difference, screen_pixels
from throughput import _tree_rss_bytes, children_by_parent
from workers import game_step, make_env

PIECES = ["the emulator (game_step: 4 frames)", "read the palette screen (and the dice)", "downsample it to 80x80",
          "the sparse difference frame", "the sparse forward pass", "sample the action", "keep the step",
          "the episode's gradient sums (at its end)"]


def worker_loop(env, weights, steps):
    """Microseconds per agent step of each piece of a worker's work, timed inside one loop that does
    what play_for_batch does: each piece is paid for with the cache misses the emulator leaves it,
    and a machine that changes speed changes every piece alike. Then play_for_batch itself."""
    rng, ale, clock = np.random.default_rng(0), env.unwrapped.ale, time.perf_counter
    screen, pixels, previous = np.empty((210, 160), np.uint8), np.empty(D, np.uint8), np.empty(D, np.uint8)
    spent, played = [0.0] * len(PIECES), 0
    while played < steps:
        env.reset()
        step = game_step(env)
        ale.getScreen(screen)
        screen_pixels(screen, previous)
        learn_colors(COLORS, previous, screen, ale.getScreenRGB)
        idxs, turned_on, ups, rewards = [], [], [], []
        done = False
        while not done:
            t0 = clock()
            if len(ups) % DICE_AT_ONCE == 0:
                dice = rng.random(DICE_AT_ONCE)
            ale.getScreen(screen)
            t1 = clock()
            screen_pixels(screen, pixels)
            t2 = clock()
            idx, on = screen_difference(pixels, previous, COLORS, screen, ale.getScreenRGB)
            pixels, previous = previous, pixels
            t3 = clock()
            p_up, _ = policy_forward_sparse(weights, idx, difference_values(on))
            t4 = clock()
            up = dice[len(ups) % DICE_AT_ONCE] < p_up
            t5 = clock()
            reward, terminated, truncated = step(UP if up else DOWN)
            t6 = clock()
            idxs.append(idx)
            turned_on.append(on)
            ups.append(up)
            rewards.append(reward)
            done = terminated or truncated
            t7 = clock()
            for piece, seconds in enumerate((t6 - t5, t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6)):
                spent[piece] += seconds                                # (plain floats: no numpy between steps)
        t0 = clock()
        episode_sums(weights, compact_episode(idxs, turned_on, ups, rewards), 0.99)
        spent[-1] += clock() - t0
        played += len(ups)
    pieces = 1e6 * np.array(spent) / played
    rng, played, start = np.random.default_rng(0), 0, clock()
    while played < steps:
        played += play_for_batch(env, weights, rng, gamma=0.99, per_episode=False).steps
    return pieces, 1e6 * (clock() - start) / played


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def training_run(seconds, workers, init_from=None):
    """CPU microseconds per agent step of each process of `pong_pg.py --workers N` over `seconds` of
    training from a fresh start (or from the agent init_from: its games are longer), the steps, the
    wall time, and the peak memory of all its processes. No checkpoint is written meanwhile: the first
    one draws the pictures (1.5 s of the learner's CPU, most of it loading matplotlib), which would
    swamp a 40-second window whenever it fell inside it."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.csv")
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", "--workers",
                                 str(workers), "--checkpoint-dir", tmp, "--save-every", "1000000",
                                 *(["--init-from", init_from] if init_from else [])],
                                cwd=ROOT, stdout=subprocess.DEVNULL)
        while not (os.path.exists(log) and os.path.getsize(log) > 80):    # the first episode is in
            time.sleep(0.05)
        workers = [pid for pid in children_by_parent().get(proc.pid, [])   # (not multiprocessing's tracker)
                   if b"resource_tracker" not in read_bytes(f"/proc/{pid}/cmdline")]
        pids = [proc.pid] + workers
        steps_before = np.loadtxt(log, delimiter=",", skiprows=1, ndmin=2)[-1, 4]
        before, start, peak = [cpu_seconds(p) for p in pids], time.time(), 0
        while time.time() - start < seconds:
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.5)
        after, wall = [cpu_seconds(p) for p in pids], time.time() - start
        steps = np.loadtxt(log, delimiter=",", skiprows=1, ndmin=2)[-1, 4] - steps_before
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    return steps, wall, [1e6 * (a - b) / steps for a, b in zip(after, before, strict=True)], peak


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="steps per piece (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=40, help="length of each training run (default: %(default)s)")
    ap.add_argument("--init-from", metavar="FILE", help="train from this agent (e.g. checkpoints/pretrained.pkl): "
                    "the costs late in training, where games last thousands of steps (default: a fresh start)")
    ap.add_argument("--skip-loop", action="store_true", help="only the training runs (part 2)")
    ap.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[2, 16, 64],
                    help="worker counts of the training runs, comma-separated (default: 2,16,64)")
    args = ap.parse_args()

    if not args.skip_loop:
        env = make_env()
        env.reset(seed=0)
        weights = play_weights(init_model(200, np.random.default_rng(0)))
        print("1. a worker's loop, one process, us per agent step:")
        pieces, whole = worker_loop(env, weights, args.steps)
        for name, us in zip(PIECES, pieces, strict=True):
            print(f"   {name:42s} {us:6.1f}")
        print(f"   {'ours (all but the emulator)':42s} {pieces[1:].sum():6.1f}")
        print(f"   {'play_for_batch as a whole, timed alone':42s} {whole:6.1f}", flush=True)
        env.close()

    cores = len(os.sched_getaffinity(0))
    start = f"--init-from {args.init_from}" if args.init_from else "a fresh start"
    print(f"\n2. pong_pg.py from {start}, {args.seconds:.0f} s each, on {cores} cores: CPU us per agent step")
    print("| workers | steps/s | learner | each worker (mean) | all processes | cores x wall time | peak memory |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers in args.workers:
        steps, wall, costs, peak = training_run(args.seconds, workers, args.init_from)
        print(f"| {workers} | {steps / wall:,.0f} | {costs[0]:.1f} | {np.mean(costs[1:]) * workers:.1f} | "
              f"{sum(costs):.1f} | {cores * 1e6 * wall / steps:.1f} | {peak / 2**20:,.0f} MB |", flush=True)
    print("(each worker: its CPU per step it played, the mean over the workers)")


if __name__ == "__main__":
    main()
