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

import pong_pg_fast
from pong_pg import init_model
from pong_pg_fast import episode_sums, play_episode, play_for_batch, play_weights
from throughput import children_by_parent, tree_rss_bytes
from workers import game_step, make_env

CLOCK = time.perf_counter
TIMED = {"game_step": "the emulator (game_step: 4 frames)", "screen_pixels": "downsample it to 80x80",
         "screen_difference": "the sparse difference frame", "policy_forward_sparse": "the sparse forward pass"}
REST = "the rest: read the screen, the dice, keep the step"
SUMS = "the episode's gradient sums (at its end)"


def timed(function, spent, piece):
    """function, its time added to spent[piece] at each call."""
    def call(*args, **kwargs):
        start = CLOCK()
        result = function(*args, **kwargs)
        spent[piece] += CLOCK() - start
        return result
    return call


def worker_loop(env, weights, steps):
    """Microseconds per agent step of each piece of a worker's work: play_episode itself, with the
    functions it calls for each piece timed (each piece is paid for with the cache misses the emulator
    leaves it; the timers add ~0.1 us a call, in the pieces and the rest), then episode_sums. Then
    play_for_batch (the two together) timed alone."""
    spent = dict.fromkeys([*TIMED.values(), REST, SUMS], 0.0)
    real = {name: getattr(pong_pg_fast, name) for name in TIMED}
    pong_pg_fast.game_step = lambda env: timed(game_step(env), spent, TIMED["game_step"])
    for name in ("screen_pixels", "screen_difference", "policy_forward_sparse"):
        setattr(pong_pg_fast, name, timed(real[name], spent, TIMED[name]))
    rng, played = np.random.default_rng(0), 0
    try:
        while played < steps:
            start = CLOCK()
            episode = play_episode(env, weights, rng)
            spent[REST] += CLOCK() - start
            timed(episode_sums, spent, SUMS)(weights, episode, 0.99)
            played += episode.steps
    finally:
        for name, function in real.items():
            setattr(pong_pg_fast, name, function)
    spent[REST] -= sum(spent[piece] for piece in TIMED.values())
    pieces = {piece: 1e6 * seconds / played for piece, seconds in spent.items()}
    rng, played, start = np.random.default_rng(0), 0, CLOCK()
    while played < steps:
        played += play_for_batch(env, weights, rng, gamma=0.99, per_episode=False, entropy=True).steps
    return pieces, 1e6 * (CLOCK() - start) / played


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
            peak = max(peak, tree_rss_bytes(proc.pid))
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
        for name, us in pieces.items():
            print(f"   {name:50s} {us:6.1f}")
        ours = sum(pieces.values()) - pieces[TIMED["game_step"]]
        print(f"   {'ours (all but the emulator)':50s} {ours:6.1f}")
        print(f"   {'play_for_batch as a whole, timed alone':50s} {whole:6.1f}", flush=True)
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
