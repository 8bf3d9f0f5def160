"""Stale weights with many workers: agent steps to each milestone of the running mean, by worker count.

With N workers and batches of 10 episodes, up to N episodes are in flight when an update lands, so an
episode may be played with weights several updates old. The agent steps a run needs depend on that
staleness, not on the machine, so runs from any machine compare here (each log's name says how many
workers and cores it ran with). The logs are kept in bench/staleness/ (wN-seedS-Kcores.csv: pong_pg's
log.csv of a run with N workers and the defaults of the time, lr 1e-3 without an entropy bonus: add
`-- --lr 1e-3 --entropy 0` to many_cores.py to run one more); 2 workers: the first segment of the night
(bench/night/seg1.csv, seed 0).

    python bench/staleness.py            # the table, and bench/staleness.png

A run is added by copying its log.csv there, e.g. from `python bench/many_cores.py --cores 16 ...` or
`python bench/learning_curves.py --workers 32 --by-steps ...`.
"""
import glob
import os
import re
import sys
from collections import defaultdict

import numpy as np
from learning_curves import MILESTONES, first_reaching

from watch import read_log

BENCH = os.path.dirname(os.path.abspath(__file__))
LOGS = os.path.join(BENCH, "staleness")
NAME = re.compile(r"w(\d+)-seed(\d+)-(\d+)cores\.csv$")


def runs():
    """[(workers, seed, cores, rows)], by workers then seed."""
    found = [(2, 0, 2, read_log(os.path.join(BENCH, "night", "seg1.csv")))]
    for path in glob.glob(os.path.join(LOGS, "w*-seed*-*cores.csv")):
        workers, seed, cores = map(int, NAME.search(path).groups())
        found.append((workers, seed, cores, read_log(path)))
    return sorted(found, key=lambda run: run[:3])


def steps_to(rows, target):
    """Agent steps at which the running mean first reached target, or None (and how far the run got)."""
    hit = first_reaching(rows, target)
    return int(hit["total_steps"]) if hit else None


def table(found):
    lines = ["| workers | seed | cores | " + " | ".join(f"steps to {m:g}" for m in MILESTONES)
             + " | the run's end |", "|---:|---:|---:|" + "---:|" * (len(MILESTONES) + 1)]
    reached = defaultdict(list)      # (workers, milestone) -> steps to it, or -(the steps run) if not reached
    for workers, seed, cores, rows in found:
        cells, ran = [], int(rows[-1]["total_steps"])
        for m in MILESTONES:
            steps = steps_to(rows, m)
            cells.append(f"{steps / 1e6:.2f}M" if steps else f"> {ran / 1e6:.2f}M")
            reached[workers, m].append(steps if steps else -ran)
        end = f"{float(rows[-1]['running_mean']):+.1f} at {ran / 1e6:.2f}M"
        lines.append(f"| {workers} | {seed} | {cores} | " + " | ".join(cells) + f" | {end} |")
    lines += ["", "| workers | runs | " + " | ".join(f"median steps to {m:g}" for m in MILESTONES) + " |",
              "|---:|---:|" + "---:|" * len(MILESTONES)]
    for workers in sorted({w for w, _ in reached}):
        cells = []
        for m in MILESTONES:
            # a run that did not get there counts at the steps it ran: then the median is a lower bound
            steps = reached[workers, m]
            median = float(np.median(np.abs(steps)))
            bound = sorted(steps, key=abs)[(len(steps) - 1) // 2: len(steps) // 2 + 1]
            cells.append(f"{'> ' if min(bound) < 0 else ''}{median / 1e6:.2f}M")
        lines.append(f"| {workers} | {len(reached[workers, MILESTONES[0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(found, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    counts = sorted({w for w, *_ in found})
    colour = dict(zip(counts, plt.cm.viridis(np.linspace(0, 0.9, len(counts))), strict=True))
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    labelled = set()
    for workers, _, _, rows in found:
        steps = np.array([int(r["total_steps"]) for r in rows]) / 1e6
        ax.plot(steps, [float(r["running_mean"]) for r in rows], color=colour[workers], lw=1.2,
                label=None if workers in labelled else f"{workers} workers")
        labelled.add(workers)
    ax.axhline(0, color="gray", lw=0.8, ls="--")
    ax.set(xlim=(0, 8), xlabel="agent steps (millions)", ylabel="running mean score (points won - lost)",
           title="Stale weights: the defaults with 2 to 64 workers, one line a run")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    found = runs()
    if not found:
        sys.exit(f"no logs in {LOGS}")
    print(table(found))
    plot(found, os.path.join(BENCH, "staleness.png"))
    print(f"\nwrote {os.path.join(BENCH, 'staleness.png')}")


if __name__ == "__main__":
    main()
