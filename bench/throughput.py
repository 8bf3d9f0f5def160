"""Training throughput, measured in one run on this machine: agent steps per second and peak memory of

  (a) the emulator's own limit: N processes playing ALE/Pong-v5 by its rules straight on the emulator
      (ALEInterface act x4 per agent step, as workers.game_step does) with random UP/DOWN actions,
      reading ALE's palette screen as pong_pg does; nothing a trainer can do goes faster,
  (a') the same through gymnasium's env.step, which also builds an observation each step: the RGB
      frame (as most Atari code steps the game), and (a'') the 128-byte RAM (obs_type="ram"),
  (b) the 2016 loop as written: `python pong_pg.py --plain --preset 2016` (one process, float64,
      dense W1 @ x on every RGB frame, the backward pass one episode at a time), and (b') the same
      from the shipped agent (long games: the plain loop's memory grows with them),
  (c) this project's trainer: `python pong_pg.py --workers N`, from a fresh start (a random agent's
      1,000-step games), and (c') from the shipped agent (games of several thousand steps, as in the
      hours of an overnight run), learning with a negligible rate so that it stays that good.

    python bench/throughput.py [--workers N] [--seconds S] [--rounds R]

Prints a table with the ratios to (a) and to (b). Machines are noisy and their speed drifts over
minutes: the emulator's ways are measured in rotation, and each trainer run against the emulator
measured just before and after it. Compare the ratios, not the times.
"""
import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
USER_ENVIRONMENT = dict(os.environ)    # for the subprocesses: importing pong_pg sets one BLAS thread here

import numpy as np

import checkpoint
from cli import SHIPPED_AGENT
from pong_pg import DOWN, UP, Hyperparameters
from training_run import CHECKPOINT_FILE, TrainingState, load_agent
from workers import game_step, make_env

# ---------------------------------------------------------------- memory of a process tree

def children_by_parent():
    """{parent pid: [child pids]} for every process, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return children


def tree_rss_bytes(root_pid):
    """Resident memory of root_pid and all its descendants, from /proc."""
    children = children_by_parent()
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


# ---------------------------------------------------------------- (a) the emulator

STEPPING = {"emulator": "(a) the emulator: ALE act x4 + palette screen",
            "env.step": "(a') gymnasium env.step (RGB observation) + palette screen",
            "env.step ram": "(a'') env.step, obs_type=\"ram\" + palette screen"}


def _random_player(how, seconds, seed, result):
    """Step the game one of the STEPPING ways with random UP/DOWN and no policy, reading ALE's palette
    screen each step as pong_pg's workers do."""
    env = make_env(obs_type="rgb" if how == "env.step" else "ram")
    env.reset(seed=seed)
    ale, step, screen = env.unwrapped.ale, game_step(env), np.empty((210, 160), np.uint8)
    rng = np.random.default_rng(seed)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        action = UP if rng.random() < 0.5 else DOWN
        if how == "emulator":
            _, terminated, truncated = step(action)
        else:
            _, _, terminated, truncated, _ = env.step(action)
        ale.getScreen(screen)
        steps += 1
        if terminated or truncated:
            env.reset()
    result.put(steps / (time.perf_counter() - start))


def stepping_ways(workers, seconds, rounds=3):
    """{way: steps/s} for each of STEPPING, the median of `rounds` turns taken in rotation (the
    machine's speed drifts over minutes: each way sees the same drift)."""
    rates = {how: [] for how in STEPPING}
    for _ in range(rounds):
        for how in STEPPING:
            rates[how].append(random_players(how, workers, seconds / rounds))
    return {how: float(np.median(r)) for how, r in rates.items()}


def random_players(how, workers, seconds):
    """Agent steps per second of `workers` processes stepping the game `how` at the same time."""
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Queue()
    procs = [ctx.Process(target=_random_player, args=(how, seconds, i, result)) for i in range(workers)]
    for p in procs:
        p.start()
    rates = [result.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


# ---------------------------------------------------------------- (b) the plain loop and (c) this trainer

def this_trainer(workers, seconds, agent=None, plain=False):
    """Train for about `seconds` after the first episode, stop with Ctrl-C (SIGINT) as a user would.
    agent: start from these weights (a trained agent's long games) instead of a fresh network.
    plain: `--plain --preset 2016`, the 2016 loop as written (one process; workers is ignored)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "log.csv")
        cmd = [sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", "--checkpoint-dir", tmp]
        cmd += ["--plain", "--preset", "2016"] if plain else ["--workers", str(workers)]
        if agent is not None:
            state = TrainingState.new(Hyperparameters(), 0)
            state.model = load_agent(agent)["model"]
            checkpoint.save(os.path.join(tmp, CHECKPOINT_FILE), state.to_checkpoint())
            cmd += ["--resume", "--lr", "1e-12"]    # all the learning work, but the agent stays as good
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                env=USER_ENVIRONMENT)
        peak = 0
        first_episode_at = None
        while first_episode_at is None or time.time() - first_episode_at < seconds:
            peak = max(peak, tree_rss_bytes(proc.pid))
            if first_episode_at is None and os.path.exists(log) and os.path.getsize(log) > 80:
                first_episode_at = time.time()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        if proc.wait(timeout=60) != 128 + signal.SIGINT:
            raise RuntimeError(f"pong_pg.py exited with {proc.returncode}")
        rows = np.loadtxt(log, delimiter=",", skiprows=1, ndmin=2)
    # steps between the first and the last finished episode, over the time between them
    total_steps, wall = rows[:, 4], rows[:, 6]
    return (total_steps[-1] - total_steps[0]) / (wall[-1] - wall[0]), peak, rows[1:, 3].mean()


def summary(runs):
    """[(ratio to the emulator, steps/s, peak RSS, game length)] -> ("median (low-high)" of the ratios,
    median steps/s, the highest peak, median game length)."""
    ratios, rates, peaks, lengths = zip(*runs, strict=True)
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{np.median(ratios):.2f}{spread}", np.median(rates), max(peaks), np.median(lengths)


def main():
    cores = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=cores, help="processes (default: the cores, %(default)s)")
    ap.add_argument("--seconds", type=float, default=20, help="length of each measurement (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of (c) and of (c'), each between two measurements "
                    "of the emulator (default: %(default)s)")
    args = ap.parse_args()

    print(f"measuring on {cores} cores with {args.workers} worker(s) ...", flush=True)
    emulator = stepping_ways(args.workers, args.seconds)
    a = emulator["emulator"]
    print("; ".join(f"{how}: {rate:,.0f} steps/s" for how, rate in emulator.items()), flush=True)
    b, b_peak, b_length = this_trainer(1, args.seconds, plain=True)
    print(f"(b) the plain loop: {b:,.0f} steps/s ({b_length:,.0f}-step games), peak {b_peak / 2**20:,.0f} MB",
          flush=True)
    bl, bl_peak, bl_length = this_trainer(1, 2 * args.seconds, SHIPPED_AGENT, plain=True)
    print(f"(b') the plain loop from the shipped agent: {bl:,.0f} steps/s ({bl_length:,.0f}-step games), "
          f"peak {bl_peak / 2**20:,.0f} MB", flush=True)
    # each trainer run is divided by the emulator's limit measured just before and just after it
    limits, runs = [random_players("emulator", args.workers, args.seconds)], {"c": [], "c'": []}
    for _ in range(args.rounds):
        for name, agent in (("c", None), ("c'", SHIPPED_AGENT)):
            rate, peak, length = this_trainer(args.workers, args.seconds, agent)
            limits.append(random_players("emulator", args.workers, args.seconds))
            runs[name].append((rate / ((limits[-2] + limits[-1]) / 2), rate, peak, length))
            print(f"({name}) pong_pg from {'the shipped agent' if agent else 'a fresh start'}: {rate:,.0f} "
                  f"steps/s ({length:,.0f}-step games), {runs[name][-1][0]:.2f} of the emulator around it",
                  flush=True)
    (c_ratio, c, c_peak, c_length), (t_ratio, t, t_peak, t_length) = (summary(runs[name]) for name in runs)
    print(flush=True)

    mb = 1024 * 1024
    print(f"| setup ({args.workers} worker(s), {cores} cores) | steps/s | peak RSS | ÷ (a) | ÷ (b) |")
    print("|---|---:|---:|---:|---:|")
    for how, name in STEPPING.items():
        print(f"| {name}, random UP/DOWN, {args.workers} process(es) | {emulator[how]:,.0f} | | "
              f"{emulator[how] / a:.2f} | |")
    print(f"| (b) the plain loop, --plain --preset 2016 (1 process, float64, dense; {b_length:,.0f}-step games) | "
          f"{b:,.0f} | {b_peak / mb:,.0f} MB | {b / a:.2f} | |")
    print(f"| (b') the same, trained agent ({bl_length:,.0f}-step games) | {bl:,.0f} | {bl_peak / mb:,.0f} MB | "
          f"{bl / a:.2f} | |")
    print(f"| (c) pong_pg.py --workers {args.workers}, fresh start ({c_length:,.0f}-step games) | {c:,.0f} | "
          f"{c_peak / mb:,.0f} MB | {c_ratio} | {c / b:.2f} |")
    print(f"| (c') the same, trained agent ({t_length:,.0f}-step games) | {t:,.0f} | {t_peak / mb:,.0f} MB | "
          f"{t_ratio} | {t / b:.2f} |")
    print(f"\n(a'), (a''): medians of 3 turns taken in rotation with (a). (c), (c'): medians of {args.rounds} "
          f"run(s), each divided by the emulator's limit measured just before and after it (range in brackets).")


if __name__ == "__main__":
    main()
