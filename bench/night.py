"""What a night of training gives: one run of the defaults, carried across machines in segments.

A night (80M agent steps: about 7 hours on a slow 2-core machine) is longer than a machine may stay
up. So the run goes in segments: the first is a plain `python pong_pg.py`; each later one starts
from the agent the one before left, with `--init-from` (a fresh RMSProp cache, which refills within a
few updates). What must survive a segment is small and kept in bench/night/: each segment's log
(segN.csv), the newest agent (agent.pkl, 5 MB) and the evaluations (evals.csv).

    python bench/night.py run --minutes 90     # one more segment: train, stop, keep its log and agent, evaluate
    python bench/night.py finish DIR           # the same for a segment trained by hand in DIR (stopped first)
    python bench/night.py plot                 # the curve of all segments: bench/night.png, and a table

Minutes do not add up across segments (machines differ, a segment may share its machine): the curve
is drawn against agent steps, and the running mean is carried on across the segments' episodes.
"""
import argparse
import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from learning_curves import read_log

from pong_pg import RUNNING_MEAN_DECAY

NIGHT = os.path.join(ROOT, "bench", "night")
AGENT = os.path.join(NIGHT, "agent.pkl")
EVALS = os.path.join(NIGHT, "evals.csv")
EVAL_COLUMNS = ["segment", "agent_steps", "sampled_mean", "sampled_won", "greedy_mean", "greedy_won"]


def segment_logs():
    paths = glob.glob(os.path.join(NIGHT, "seg*.csv"))
    return sorted(paths, key=lambda p: int(re.search(r"seg(\d+)\.csv$", p).group(1)))


def trainer(*args):
    return [sys.executable, os.path.join(ROOT, "pong_pg.py"), *map(str, args)]


def stitched():
    """(agent steps, running mean) over every episode of every segment, in order, and the agent steps
    at which each later segment starts; the running mean is the trainer's, carried on from one
    segment into the next."""
    steps, means, starts, offset, mean = [], [], [], 0, None
    for path in segment_logs():
        if steps:
            starts.append(offset)
        rows = read_log(path)
        for r in rows:
            score = float(r["score"])
            mean = score if mean is None else RUNNING_MEAN_DECAY * mean + (1 - RUNNING_MEAN_DECAY) * score
            steps.append(offset + int(r["total_steps"]))
            means.append(mean)
        offset += int(rows[-1]["total_steps"]) if rows else 0
    return steps, means, starts


def run_segment(minutes, run_dir):
    """Train one segment in run_dir (new: from the last segment's agent) for minutes, then finish it."""
    done = len(segment_logs())
    start = ["--init-from", AGENT] if done else []
    # segment N+1 plays with seed N: its episodes' random numbers are not the first segment's again
    proc = subprocess.Popen(trainer("--quiet", "--seed", done, "--checkpoint-dir", run_dir, *start), cwd=ROOT)
    try:
        proc.wait(timeout=60 * minutes)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)                 # it saves its checkpoint, then exits
        proc.wait()
    finish(run_dir)


def finish(run_dir):
    """Keep run_dir's log as the next segment's, its agent as agent.pkl, and evaluate the agent."""
    os.makedirs(NIGHT, exist_ok=True)
    segment = len(segment_logs()) + 1
    shutil.copyfile(os.path.join(run_dir, "log.csv"), os.path.join(NIGHT, f"seg{segment}.csv"))
    subprocess.run(trainer("--checkpoint-dir", run_dir, "--export", AGENT), cwd=ROOT, check=True)   # atomic
    out = subprocess.run(trainer("--checkpoint", AGENT, "--eval", 30), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    pattern = r"(sampled|greedy) policy: mean score ([-+.\d]+) .*?won (\d+)/"
    found = {mode: (mean, won) for mode, mean, won in re.findall(pattern, out)}
    steps = stitched()[0]
    row = {"segment": segment, "agent_steps": steps[-1] if steps else 0,
           "sampled_mean": found["sampled"][0], "sampled_won": found["sampled"][1],
           "greedy_mean": found["greedy"][0], "greedy_won": found["greedy"][1]}
    new = not os.path.exists(EVALS)
    with open(EVALS, "a", newline="") as f:
        writer = csv.DictWriter(f, EVAL_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(out.strip().splitlines()[-2:], row, sep="\n")


def plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, means, starts = stitched()
    evals = []
    if os.path.exists(EVALS):
        with open(EVALS, newline="") as f:
            evals = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([s / 1e6 for s in steps], means, lw=1, label="running mean score")
    for r in evals:
        ax.plot(int(r["agent_steps"]) / 1e6, float(r["sampled_mean"]), "o", color="C1")
    ax.plot([], [], "o", color="C1", label="--eval 30 of the segment's last agent, sampled policy")
    for start in starts:
        ax.axvline(start / 1e6, color="0.8", lw=0.8)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("agent steps (millions); grey lines: a new segment (--init-from the last agent)")
    ax.set_ylabel("score (points won − points lost)")
    ax.set_title("A night of `python pong_pg.py`, default settings")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "night.png"), dpi=100)
    print("| agent steps | running mean |\n|---:|---:|")
    marks = iter([m * 1e6 for m in (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 100)])
    mark = next(marks)
    for s, m in zip(steps, means, strict=True):
        if s >= mark:
            print(f"| {s / 1e6:.1f}M | {m:+.1f} |")
            mark = next(marks, float("inf"))
    if steps:
        print(f"| {steps[-1] / 1e6:.1f}M (last) | {means[-1]:+.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train one more segment, then keep its log and agent and evaluate")
    run.add_argument("--minutes", type=float, required=True)
    run.add_argument("--dir", help="the segment's run directory, new (default: runs/night/segN)")
    sub.add_parser("finish", help="keep the log and agent of a segment trained by hand").add_argument("dir")
    sub.add_parser("plot", help="draw the curve of all segments")
    args = ap.parse_args()
    if args.command == "run":
        run_segment(args.minutes, args.dir or os.path.join(ROOT, "runs", "night", f"seg{len(segment_logs()) + 1}"))
    elif args.command == "finish":
        finish(args.dir)
    else:
        plot()


if __name__ == "__main__":
    main()
