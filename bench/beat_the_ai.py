r"""Agent steps to beat the built-in AI, over many seeds: which learning settings make every run fast?

Each run is the plain `python pong_pg.py` with one candidate's flags, one seed and --workers N, run
until its running mean reaches --target (0: it beats the built-in AI) or it has played --max-steps
agent steps (a run past 15M counts as failed). Agent steps do not depend on the machine, so runs may
share it: --side-by-side K runs K at once (niced, so that other work on the machine comes first).
Along the way each run's weights and RMSProp cache are kept every --keep-every steps (snapshots/ in
its directory, for `diagnose`).

    python bench/beat_the_ai.py run --candidates lr-1e-3 lr-2e-3 --seeds 0 1 --workers 1 \
        --side-by-side 2 --max-steps 4e6                     # screening: one worker each, two at once
    python bench/beat_the_ai.py run --candidates lr-2e-3 --seeds 0-9          # the user's way: all cores
    python bench/beat_the_ai.py report                       # the table (agent steps to -15/-10/-5/0) and picture
    python bench/beat_the_ai.py diagnose RUN ...             # what the kept snapshots show, run by run

Runs live in runs/beat_the_ai/NAME/ (checkpoint, log, snapshots); each finished run's log is copied
to bench/beat_the_ai/NAME.csv, which `report` reads (with the logs of earlier studies it names).
NAME is CANDIDATE-wWORKERS-sSEED. `run` is for Linux and macOS (it nices and stops runs with SIGINT);
`report` and `diagnose` run anywhere.
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np
from learning_curves import first_reaching

import checkpoint
from cli import available_cores
from watch import read_log

CANDIDATES = {                      # name: the flags it adds to `python pong_pg.py`, each setting named
    "lr-1e-3": ["--lr", "1e-3", "--entropy", "0"],            # the defaults before this study
    "lr-2e-3": ["--lr", "2e-3", "--entropy", "0"],
    "lr-3e-3": ["--lr", "3e-3", "--entropy", "0"],
    "lr-3e-3-entropy-0.01": ["--lr", "3e-3", "--entropy", "0.01"],
    "lr-3e-3-entropy-0.02": ["--lr", "3e-3", "--entropy", "0.02"],     # the defaults it chose
    "lr-3e-3-entropy-0.05": ["--lr", "3e-3", "--entropy", "0.05"],
    "lr-2e-3-entropy-0.01": ["--lr", "2e-3", "--entropy", "0.01"],
}
MILESTONES = (-15, -10, -5, 0)
RUNS = os.path.join(ROOT, "runs", "beat_the_ai")
KEPT = os.path.join(ROOT, "bench", "beat_the_ai")


def seeds(text):
    """'0-9' -> [0..9]; '3' -> [3]."""
    a, _, b = text.partition("-")
    return list(range(int(a), int(b or a) + 1))


def finished(rows, target, max_steps):
    return bool(rows) and (first_reaching(rows, target) is not None or int(rows[-1]["total_steps"]) >= max_steps)


class Run:
    """One (candidate, workers, seed) run: started or resumed in its directory, polled, stopped."""

    def __init__(self, candidate, workers, seed, args):
        self.name = f"{candidate}-w{workers}-s{seed}"
        self.directory = os.path.join(RUNS, self.name)
        self.flags = CANDIDATES[candidate] + ["--workers", str(workers), "--seed", str(seed)]
        self.args, self.proc = args, None

    def rows(self):
        return read_log(os.path.join(self.directory, "log.csv"))

    def done(self):
        return finished(self.rows(), self.args.target, self.args.max_steps)

    def start(self):
        os.makedirs(os.path.join(self.directory, "snapshots"), exist_ok=True)
        resume = ["--resume"] if os.path.exists(os.path.join(self.directory, "pong_pg.pkl")) else []
        cmd = [sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", "--save-every", "20",
               "--checkpoint-dir", self.directory, *resume, *self.flags]
        print(f"{self.name}: {' '.join(cmd[1:])}", flush=True)
        self.out = open(os.path.join(self.directory, "out.log"), "a")    # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     preexec_fn=lambda: os.nice(self.args.nice))   # POSIX, as is SIGINT below

    def poll(self):
        """Keep a snapshot when the checkpoint has passed the next multiple of --keep-every; stop the run
        once it is finished. Whether it still runs."""
        rows = self.rows()
        self.keep_snapshot()
        if finished(rows, self.args.target, self.args.max_steps) and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)             # saves: the run could be continued
        if self.proc.poll() is None:
            return True
        self.proc.wait()
        self.out.close()
        if self.done():
            os.makedirs(KEPT, exist_ok=True)
            shutil.copy(os.path.join(self.directory, "log.csv"), os.path.join(KEPT, self.name + ".csv"))
            print(f"{self.name}: {summary(self.rows(), self.args.target)}", flush=True)
        else:
            print(f"{self.name}: the trainer stopped unfinished (exit {self.proc.returncode}); see its out.log",
                  flush=True)
        return False

    def keep_snapshot(self):
        """The checkpoint's weights and RMSProp cache, at most one per --keep-every agent steps."""
        every = int(self.args.keep_every)
        kept = glob.glob(os.path.join(self.directory, "snapshots", "*.pkl"))
        last = max((int(re.search(r"(\d+)\.pkl$", p).group(1)) // every for p in kept), default=-1)
        rows = self.rows()
        if rows and int(rows[-1]["total_steps"]) // every <= last:
            return
        try:
            state = checkpoint.load(os.path.join(self.directory, "pong_pg.pkl"))
        except checkpoint.CheckpointError:
            return                                          # not written yet, or being replaced: next time
        if state["total_steps"] // every > last:
            snapshot = {k: state[k] for k in ("model", "cache", "episode", "total_steps", "updates", "running_mean")}
            checkpoint.save(os.path.join(self.directory, "snapshots", f"{state['total_steps']}.pkl"), snapshot)


def summary(rows, target):
    hit = first_reaching(rows, target)
    last = rows[-1]
    if hit:
        return f"running mean {target:+g} at {int(hit['total_steps']) / 1e6:.2f}M agent steps"
    return f"not within {int(last['total_steps']) / 1e6:.2f}M agent steps (reached {float(last['running_mean']):+.1f})"


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def run(args):
    """Start the unfinished runs, args.side_by_side at a time. Ctrl-C or SIGTERM stops them (each saves)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)   # `&` in a script would have it ignored
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    todo = [Run(c, args.workers, s, args) for c in args.candidates for s in args.seeds]
    todo = [r for r in todo if not r.done()]
    running = []
    try:
        while todo or running:
            while todo and len(running) < args.side_by_side:
                running.append(todo.pop(0))
                running[-1].start()
            time.sleep(5)
            running = [r for r in running if r.poll()]
    finally:
        for r in running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGINT)
                r.proc.wait()


# ---------------------------------------------------------------- report

def milestones(rows):
    """Agent steps at which the running mean first reached each milestone (None: not reached)."""
    return [int(hit["total_steps"]) if (hit := first_reaching(rows, m)) else None for m in MILESTONES]


def kept_runs():
    """{setting: [(name, rows)]} of every kept log in bench/beat_the_ai/, setting = NAME less its seed."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(KEPT, "*-w*-s*.csv"))):
        name = os.path.basename(path)[:-4]
        runs.setdefault(name.rsplit("-s", 1)[0], []).append((name, read_log(path)))
    return runs


def millions(steps):
    return f"{steps / 1e6:.2f}M"


def report(args):
    runs = kept_runs()
    print("| run | " + " | ".join(f"steps to {m:+d}" for m in MILESTONES) + " | the run's end |")
    print("|---|" + "---:|" * (len(MILESTONES) + 1))
    for named in runs.values():
        for name, rows in sorted(named, key=lambda n: int(n[0].rsplit("-s", 1)[1])):
            cells = [millions(s) if s else f"> {millions(int(rows[-1]['total_steps']))}" for s in milestones(rows)]
            print(f"| {name} | " + " | ".join(cells) + f" | {float(rows[-1]['running_mean']):+.1f} at "
                  f"{millions(int(rows[-1]['total_steps']))} |")
    print("\n| setting | runs | median steps to 0 | slowest | runs past 0 by 6M | median to -15 | to -10 | to -5 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for setting, named in runs.items():
        table = [milestones(rows) for _, rows in named]
        to_zero = sorted(m[-1] if m[-1] else float("inf") for m in table)
        cells = []
        for i in range(len(MILESTONES) - 1):
            column = sorted(m[i] if m[i] else float("inf") for m in table)
            cells.append(millions(np.median(column)) if np.median(column) < float("inf") else "—")
        slowest = "not reached" if to_zero[-1] == float("inf") else millions(to_zero[-1])
        median = np.median(to_zero)
        print(f"| {setting} | {len(table)} | {millions(median) if median < float('inf') else 'not reached'} | "
              f"{slowest} | {sum(s <= 6e6 for s in to_zero)} of {len(table)} | " + " | ".join(cells) + " |")
    plot(runs, os.path.join(ROOT, "bench", "beat_the_ai.png"))


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = list(runs)
    columns = min(4, len(settings))
    rows = -(-len(settings) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), dpi=90, sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(settings):]:
        ax.set_visible(False)
    for ax, setting in zip(axes.flat[:len(settings)], settings, strict=True):
        for _, rows in runs[setting]:
            ax.plot([int(r["total_steps"]) / 1e6 for r in rows], [float(r["running_mean"]) for r in rows], lw=1)
        ax.axhline(0, color="gray", ls="--", lw=0.8)
        ax.set_title(f"{setting} ({len(runs[setting])} runs)", fontsize=10)
        ax.set_xlabel("agent steps (millions)")
        ax.set_xlim(0, 8)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("running mean score")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


# ---------------------------------------------------------------- diagnose

DIAGNOSIS_COLUMNS = ["run", "agent_steps", "running_mean", "game_score", "game_steps", "saturated", "up_share",
                     "dead_units", "return_std", "w1_step", "w2_step", "rmsprop_scale"]


def diagnose_snapshot(state, previous, lr, games=2):
    """What one snapshot's network does in `games` games of its own (sampled actions, fixed seeds):
    the share of steps with P(UP) beyond 0.02..0.98 (saturated), the share of UP actions, the share of
    hidden units that never fired (dead), the spread of the discounted returns before they are
    standardized; and from its weights and RMSProp cache: the mean |change| of W1's moved weights and of
    W2 per update since the previous snapshot, and lr / sqrt(cache) (RMSProp's step per unit of
    gradient) over W1's weights that have a cache."""
    from pong_pg import discount_rewards
    from pong_pg_fast import play_episode, play_weights, policy_forward_sparse
    from workers import make_env, task_rng
    weights = play_weights(state["model"])
    env = make_env()
    env.reset(seed=0)
    episodes = [play_episode(env, weights, task_rng(0, g)) for g in range(games)]
    env.close()
    ps, fired = [], np.zeros(len(weights["W2"]), bool)
    for e in episodes:
        for t in range(e.steps):
            frame = slice(e.indptr[t], e.indptr[t + 1])
            p, h = policy_forward_sparse(weights, e.idx[frame].astype(np.intp), e.vals[frame].astype(np.float32))
            ps.append(p)
            fired |= h > 0
    ps = np.array(ps)
    returns = np.concatenate([discount_rewards(e.rewards, 0.99) for e in episodes])
    row = {"agent_steps": state["total_steps"], "running_mean": state["running_mean"],
           "game_score": np.mean([e.score for e in episodes]), "game_steps": np.mean([e.steps for e in episodes]),
           "saturated": np.mean((ps < 0.02) | (ps > 0.98)),
           "up_share": np.mean(np.concatenate([e.up for e in episodes])),
           "dead_units": 1 - fired.mean(), "return_std": returns.std(), "w1_step": None, "w2_step": None}
    if previous is not None and state["updates"] > previous["updates"]:
        updates = state["updates"] - previous["updates"]
        moved = state["model"]["W1"] != previous["model"]["W1"]
        row["w1_step"] = np.abs(state["model"]["W1"] - previous["model"]["W1"])[moved].mean() / updates
        row["w2_step"] = np.abs(state["model"]["W2"] - previous["model"]["W2"]).mean() / updates
    cache = state["cache"]["W1"][state["cache"]["W1"] > 0] if "cache" in state else np.empty(0)   # agent files
    row["rmsprop_scale"] = float(np.median(lr / (np.sqrt(cache) + 1e-5))) if cache.size else None  # have none
    return row


def diagnose(args):
    rows = []
    for name in args.runs:
        directory = os.path.join(RUNS, name)
        candidate = name.rsplit("-w", 1)[0]
        flags = CANDIDATES[candidate]
        lr = float(flags[flags.index("--lr") + 1])
        paths = sorted(glob.glob(os.path.join(directory, "snapshots", "*.pkl")),
                       key=lambda p: int(re.search(r"(\d+)\.pkl$", p).group(1)))
        previous = None
        for path in paths:
            state = checkpoint.load(path)
            rows.append(dict(run=name, **diagnose_snapshot(state, previous, lr)))
            previous = state
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()),
                  flush=True)
    os.makedirs(KEPT, exist_ok=True)
    path = os.path.join(KEPT, "diagnosis.csv")
    kept = [r for r in read_csv(path) if r["run"] not in args.runs] if os.path.exists(path) else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, DIAGNOSIS_COLUMNS)
        writer.writeheader()
        writer.writerows(kept + rows)
    print(f"wrote {path}")
    plot_diagnosis(read_csv(path), os.path.join(ROOT, "bench", "beat_the_ai_diagnosis.png"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_diagnosis(rows, path):
    """One panel per measure against agent steps, a line per run: solid for a run whose running mean
    passed 0 within 4M agent steps, dashed for the others."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    measures = [("running_mean", "running mean score"), ("saturated", "steps with P(UP) < 0.02 or > 0.98"),
                ("up_share", "share of UP actions"), ("dead_units", "hidden units that never fire"),
                ("return_std", "spread of the returns"), ("w1_step", "mean |W1 step| per update")]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=90)
    colors = [plt.cm.tab20(i) for i in range(20)]                 # 20 colours: one a run
    for i, run in enumerate(runs):
        own = [r for r in rows if r["run"] == run and r["running_mean"] not in ("", "None")]
        steps = [int(r["agent_steps"]) / 1e6 for r in own]
        log = read_log(os.path.join(KEPT, run + ".csv")) or read_log(os.path.join(RUNS, run, "log.csv"))
        hit = first_reaching(log, 0)                     # the kept log outlives runs/
        fast = hit is not None and int(hit["total_steps"]) <= 4e6
        for ax, (key, label) in zip(axes.flat, measures, strict=True):
            values = [float(r[key]) if r[key] not in ("", "None") else np.nan for r in own]
            ax.plot(steps, values, color=colors[i % len(colors)], ls="-" if fast else "--", lw=1.2,
                    label=run if key == "running_mean" else None)
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("agent steps (millions)")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("solid: the running mean passed 0 within 4M agent steps; dashed: not", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train the runs not finished yet")
    r.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES),
                   default=["lr-3e-3-entropy-0.02"], help="(default: lr-3e-3-entropy-0.02, the defaults)")
    r.add_argument("--seeds", type=seeds, nargs="+", default=[[0]], help="e.g. 0-9 or 0 3 5 (default: 0)")
    r.add_argument("--workers", type=int, default=available_cores(), help="as pong_pg.py's (default: the cores)")
    r.add_argument("--side-by-side", type=int, default=1, help="runs at once (default: 1)")
    r.add_argument("--target", type=float, default=0.0)
    r.add_argument("--max-steps", type=float, default=15e6)
    r.add_argument("--keep-every", type=float, default=5e5, help="agent steps between snapshots")
    r.add_argument("--nice", type=int, default=10)
    sub.add_parser("report", help="the table and the picture of the kept logs")
    d = sub.add_parser("diagnose", help="what the kept snapshots of these runs show (bench/beat_the_ai/diagnosis.csv)")
    d.add_argument("runs", nargs="+", help="run names, e.g. lr-1e-3-w1-s0")
    args = ap.parse_args()
    if args.command == "run":
        args.seeds = sorted({s for group in args.seeds for s in group})
        try:
            run(args)
        except KeyboardInterrupt:
            sys.exit("stopped: the runs under way saved their state; the same command continues them")
    elif args.command == "diagnose":
        diagnose(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
