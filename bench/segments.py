"""A training run kept in segments, for runs longer than a machine may stay up (bench/night.py,
bench/plateau.py).

What must survive a segment is small and kept in one directory of the tree (`keep`): each segment's
log (segN.csv) and its evaluations (evals.csv). The newest agent (5 MB) is kept outside the tree, in
the file `agent` (a path argument: every 5 MB committed stays in every clone's history). The next
segment starts from that agent with `--init-from` (a fresh RMSProp cache, under which the learning
rate warms up: pong_pg.learning_rate); the big checkpoints stay in the segment's run directory, which
may be lost. What a re-run reproduces: the same settings and steps, not the same numbers (with two
workers or more, the order in which episodes finish depends on timing).
"""
import csv
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pong_pg import RUNNING_MEAN_DECAY
from watch import read_log

EVAL_COLUMNS = ["segment", "agent_steps", "sampled_mean", "sampled_won", "greedy_mean", "greedy_won"]


def trainer(*args):
    return [sys.executable, os.path.join(ROOT, "pong_pg.py"), *map(str, args)]


def segment_logs(keep):
    paths = glob.glob(os.path.join(keep, "seg*.csv"))
    return sorted(paths, key=lambda p: int(re.search(r"seg(\d+)\.csv$", p).group(1)))


def stitched(keep):
    """(agent steps, running mean, score) of every episode of every segment in keep, in order, and the
    agent steps at which each later segment starts; the running mean is the trainer's, carried on from
    one segment into the next."""
    steps, means, scores, starts, offset, mean = [], [], [], [], 0, None
    for path in segment_logs(keep):
        if steps:
            starts.append(offset)
        rows = read_log(path)
        for r in rows:
            score = float(r["score"])
            mean = score if mean is None else RUNNING_MEAN_DECAY * mean + (1 - RUNNING_MEAN_DECAY) * score
            steps.append(offset + int(r["total_steps"]))
            means.append(mean)
            scores.append(score)
        offset += int(rows[-1]["total_steps"]) if rows else 0
    return steps, means, scores, starts


def steps_done(keep):
    steps = stitched(keep)[0]
    return steps[-1] if steps else 0


class SegmentFailed(Exception):
    """A segment's trainer ended with an error or before its first episode."""


def pinned(cores):
    """Popen's preexec_fn that keeps a process (and its workers) on these cores; None for any core."""
    return (lambda: os.sched_setaffinity(0, cores)) if cores else None


def train_segment(keep, run_dir, flags, agent, seed=0, first_from=None, minutes=None, until_steps=None,
                  evaluate=True, cores=None):
    """Train one more segment of the run kept in keep, in run_dir (new): from the agent file `agent`, or
    for the first segment from first_from (None: a fresh network), with the trainer's flags, for `minutes` or
    until the run has `until_steps` agent steps in all, whichever comes first; then keep its log and
    agent (finish). Segment N+1 plays with --seed seed + N: its episodes' random numbers are not the
    first segment's again. cores: pin the trainer and its evaluation to these cores (Linux), as if
    the machine had only them."""
    done = len(segment_logs(keep))
    start = ["--init-from", agent] if done else (["--init-from", first_from] if first_from else [])
    offset, log = steps_done(keep), os.path.join(run_dir, "log.csv")
    proc = subprocess.Popen(trainer("--quiet", "--seed", seed + done, "--checkpoint-dir", run_dir, *start, *flags),
                            cwd=ROOT, preexec_fn=pinned(cores))
    deadline = time.time() + 60 * minutes if minutes else float("inf")
    while proc.poll() is None:
        rows = read_log(log) if until_steps else []
        if time.time() > deadline or (rows and offset + int(rows[-1]["total_steps"]) >= until_steps):
            proc.send_signal(signal.SIGINT)             # it saves its checkpoint, then exits
            proc.wait()
            break
        time.sleep(2)
    # The trainer exits 0 when done, 128 + the signal's number when a stop signal (this SIGINT, a
    # Ctrl-C) made it save and stop. Any other end is a failure (a worker died, no ale-py, a full disk)
    # and keeps nothing: its agent would replace the kept one with an untrained copy.
    episodes = len(read_log(log))
    if not (proc.returncode == 0 or proc.returncode > 128) or not episodes:
        raise SegmentFailed(f"the trainer in {run_dir} ended with exit code {proc.returncode} after "
                            f"{episodes} episodes; {keep} is left as it was")
    finish(keep, run_dir, agent, evaluate, cores)


def finish(keep, run_dir, agent, evaluate=True, cores=None):
    """Keep run_dir's log as the next segment's and its agent as the file `agent`; evaluate the agent."""
    os.makedirs(keep, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(agent)), exist_ok=True)
    segment = len(segment_logs(keep)) + 1
    shutil.copyfile(os.path.join(run_dir, "log.csv"), os.path.join(keep, f"seg{segment}.csv"))
    subprocess.run(trainer("--checkpoint-dir", run_dir, "--export", agent), cwd=ROOT, check=True)   # atomic
    if evaluate:
        evaluate_agent(keep, segment, agent, cores=cores)


def evaluate_agent(keep, segment, agent, games=30, cores=None):
    """--eval games of the agent file `agent`, a row of keep/evals.csv."""
    out = subprocess.run(trainer("--checkpoint", agent, "--eval", games), cwd=ROOT,
                         check=True, capture_output=True, text=True, preexec_fn=pinned(cores)).stdout
    found = evaluation(out)
    row = {"segment": segment, "agent_steps": steps_done(keep),
           **{f"{mode}_{k}": found[mode][k] for mode in ("sampled", "greedy") for k in ("mean", "won")}}
    append_row(os.path.join(keep, "evals.csv"), EVAL_COLUMNS, row)
    print(out.strip().splitlines()[-2:], row, sep="\n")
    return row


def evaluation(out):
    """What `pong_pg.py --eval N` printed, per policy: {"sampled": {"mean", "ci", "won"}, "greedy": ...}."""
    pattern = r"(sampled|greedy) policy: mean score ([-+.\d]+) ± ([.\d]+|nan) .*?won (\d+)/"
    return {mode: {"mean": mean, "ci": ci, "won": won} for mode, mean, ci, won in re.findall(pattern, out)}


def append_row(path, columns, row):
    """Append row (a dict) to the CSV file path, with the header line if the file is new."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, columns)
        if new:
            writer.writeheader()
        writer.writerow(row)


def evals(keep):
    path = os.path.join(keep, "evals.csv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
