"""The night as a user runs it: `python pong_pg.py`, stopped and `--resume`d, with `--eval 30` of the
agent at every 10M agent steps, for a few seeds side by side.

Each run lives in RUNS/NAME-sSEED/ (the checkpoint pong_pg.pkl, log.csv and a copy of the checkpoint
at each mark: at-10M.pkl, ..., and at-zero.pkl, the first checkpoint whose running mean is above 0);
these are big and stay outside the work tree. What must survive is small and kept in bench/overnight/:
each run's log (NAME-sSEED.csv) and the evaluations (evals.csv). The same command carries the runs on
after any stop (a machine that went away, Ctrl-C): the trainer resumes from its checkpoint, and a mark
whose evaluation was not written is evaluated first.

    python bench/overnight.py run --seeds 40 41 --runs ~/runs/overnight            # the defaults
    python bench/overnight.py run --name X --branch-from defaults --seeds 40 41 -- --some-flag V
    python bench/overnight.py report                                                # table + picture

--branch-from NAME starts each run as a copy of run NAME's at-zero.pkl (the point its running mean
first passed 0) and resumes it with the flags after `--`: a candidate that changes nothing before
that point is compared with the same seeds' baseline from there on, in fewer agent steps.
"""
import argparse
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from segments import append_row, evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_SAMPLED = 15.66     # checkpoints/pretrained.pkl, --eval 100, the sampled policy (README "What to expect")
KEEP = os.path.join(ROOT, "bench", "overnight")
EVAL_COLUMNS = ["name", "seed", "mark", "agent_steps", "episode", "running_mean", "sampled_mean", "sampled_ci",
                "sampled_won", "greedy_mean", "greedy_ci", "greedy_won"]
EVAL_GAMES = 30
write_lock = threading.Lock()


def say(*parts):
    with write_lock:
        print(time.strftime("%H:%M:%S"), *parts, flush=True)


def trainer(*args):
    return [sys.executable, os.path.join(ROOT, "pong_pg.py"), *map(str, args)]


def last_row(log):
    """The last whole row of a trainer's log.csv, as a dict (None before the first episode)."""
    if not os.path.exists(log):
        return None
    with open(log, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    rows = [line for line in lines[1:] if line.endswith("\n")]
    return dict(zip(lines[0].strip().split(","), rows[-1].strip().split(","), strict=True)) if rows else None


def mark_name(steps):
    return "zero" if steps is None else f"{round(steps / 1e6)}M"


def read_evals(keep=KEEP):
    path = os.path.join(keep, "evals.csv")
    return read_csv(path) if os.path.exists(path) else []


def evaluate(name, seed, run_dir, mark, keep):
    """--eval 30 of the checkpoint kept at a mark: a row of keep/evals.csv."""
    snapshot = os.path.join(run_dir, f"at-{mark}.pkl")
    out = subprocess.run(trainer("--checkpoint", snapshot, "--eval", EVAL_GAMES), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    found = evaluation(out)
    head = re.search(r"trained for (\d+) episodes, running mean ([-+.\d]+)", out)
    row = {"name": name, "seed": seed, "mark": mark, "agent_steps": kept_steps(run_dir, mark),
           "episode": head.group(1), "running_mean": head.group(2),
           **{f"{mode}_{k}": found[mode][k] for mode in ("sampled", "greedy") for k in ("mean", "ci", "won")}}
    with write_lock:
        append_row(os.path.join(keep, "evals.csv"), EVAL_COLUMNS, row)
    say(f"{name}-s{seed} at {mark}: {row}")


def kept_steps(run_dir, mark):
    """The agent steps of the checkpoint kept at a mark."""
    with open(os.path.join(run_dir, f"at-{mark}.steps")) as f:
        return int(f.read())


def keep_log(name, seed, run_dir, keep):
    shutil.copyfile(os.path.join(run_dir, "log.csv"), os.path.join(keep, f"{name}-s{seed}.csv"))


def snapshot(run_dir, mark, steps):
    """Keep the checkpoint as it is now as at-MARK.pkl (and its agent steps beside it)."""
    shutil.copyfile(os.path.join(run_dir, "pong_pg.pkl"), os.path.join(run_dir, f"at-{mark}.pkl.tmp"))
    with open(os.path.join(run_dir, f"at-{mark}.steps"), "w") as f:
        f.write(f"{steps}\n")
    os.replace(os.path.join(run_dir, f"at-{mark}.pkl.tmp"), os.path.join(run_dir, f"at-{mark}.pkl"))


def train_until(run_dir, first, flags, until_steps, stop_at_zero):
    """Train (a new run or --resume) until the log passes until_steps agent steps, or its running mean
    passes 0 where stop_at_zero; then stop the trainer (it saves its checkpoint). Returns the last row."""
    start = ["--resume"] if not first else []
    log = os.path.join(run_dir, "log.csv")
    with open(os.path.join(run_dir, "train.out"), "a") as out:
        proc = subprocess.Popen(trainer("--quiet", "--checkpoint-dir", run_dir, *start, *flags), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            row = last_row(log)
            if row and (int(row["total_steps"]) >= until_steps or (stop_at_zero and float(row["running_mean"]) > 0)):
                proc.send_signal(signal.SIGTERM)           # it saves its checkpoint, then exits (143)
                proc.wait()
                break
            time.sleep(3)
    if proc.returncode not in (0, 128 + signal.SIGTERM):
        raise RuntimeError(f"the trainer in {run_dir} ended with exit code {proc.returncode}")
    return last_row(log)


def carry_on(name, seed, runs, until, every, flags, branch_from, keep):
    run_dir = os.path.join(runs, f"{name}-s{seed}")
    first = not os.path.exists(os.path.join(run_dir, "pong_pg.pkl"))
    if first:
        os.makedirs(run_dir, exist_ok=True)
        if branch_from:
            source = os.path.join(runs, f"{branch_from}-s{seed}")
            if not os.path.exists(os.path.join(source, "at-zero.pkl")):
                say(f"{name}-s{seed}: waiting for {branch_from}-s{seed} to pass 0")
            while not os.path.exists(os.path.join(source, "at-zero.pkl")):
                time.sleep(30)
            shutil.copyfile(os.path.join(source, "at-zero.pkl"), os.path.join(run_dir, "pong_pg.pkl"))
            with open(os.path.join(source, "at-zero.steps")) as f:
                at_zero = int(f.read())
            with open(os.path.join(source, "log.csv")) as f, open(os.path.join(run_dir, "log.csv"), "w") as log:
                log.writelines(row for i, row in enumerate(f) if i == 0 or int(row.split(",")[4]) <= at_zero)
            first = False
        else:
            flags = ["--seed", seed, *flags]
    elif not branch_from:
        flags = []                       # the checkpoint holds the hyperparameters; --resume follows them
    done = {(r["name"], int(r["seed"]), r["mark"]) for r in read_evals(keep)}
    while True:
        for path in sorted(os.listdir(run_dir)):      # marks kept but not yet evaluated (a stop in between)
            m = re.fullmatch(r"at-(\d+M)\.pkl", path)
            if m and (name, seed, m.group(1)) not in done:
                evaluate(name, seed, run_dir, m.group(1), keep)
                done.add((name, seed, m.group(1)))
        row = last_row(os.path.join(run_dir, "log.csv"))
        steps = int(row["total_steps"]) if row else 0
        if steps >= until:
            keep_log(name, seed, run_dir, keep)
            say(f"{name}-s{seed}: done, {steps:,} agent steps")
            return
        target = min((steps // every + 1) * every, until)
        need_zero = not branch_from and not os.path.exists(os.path.join(run_dir, "at-zero.pkl"))
        say(f"{name}-s{seed}: training from {steps:,} to {target:,} agent steps")
        row = train_until(run_dir, first, flags, target, need_zero)
        first, flags = False, ([] if not branch_from else flags)
        steps = int(row["total_steps"])
        keep_log(name, seed, run_dir, keep)
        if need_zero and float(row["running_mean"]) > 0:
            snapshot(run_dir, "zero", steps)
            say(f"{name}-s{seed}: running mean {row['running_mean']} at {steps:,} agent steps "
                f"(episode {row['episode']}): kept at-zero.pkl")
        if steps >= target:
            snapshot(run_dir, mark_name(target), steps)


def run(args):
    os.makedirs(args.keep, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    say(f"{args.name}: seeds {args.seeds}, to {args.until:,.0f} agent steps, code at {commit or '?'}, "
        f"flags {args.flags}")
    with ThreadPoolExecutor(len(args.seeds)) as pool:
        futures = [pool.submit(carry_on, args.name, seed, os.path.expanduser(args.runs), int(args.until),
                               int(args.every), args.flags, args.branch_from, args.keep) for seed in args.seeds]
        for f in futures:
            f.result()


MARKERS = [("o", "dots"), ("s", "squares"), ("^", "triangles"), ("D", "diamonds")]   # a seed's evaluations


def signed(x, digits):
    """+1.25, or −0.50 with a true minus sign, as bench/README.md's tables write scores."""
    return f"{x:+.{digits}f}".replace("-", "−")


def report(args):
    rows = read_evals(args.keep)
    settings = sorted({r["name"] for r in rows if not args.settings or r["name"] in args.settings},
                      key=lambda n: (n != "defaults", n))
    runs = sorted({(r["name"], r["seed"]) for r in rows if r["name"] in settings},
                  key=lambda run: (settings.index(run[0]), run[1]))
    at = {(r["name"], r["seed"], r["mark"]): r for r in rows}
    print("| agent steps | " + " | ".join(f"{name}, seed {seed}" for name, seed in runs) + " | "
          + " | ".join(f"{name}: sampled, mean of the seeds" for name in settings) + " |")
    print("|---" * (1 + len(runs) + len(settings)) + "|")
    for mark in sorted({r["mark"] for r in rows}, key=lambda m: int(m[:-1])):   # a row a mark: 10M, 20M, ...
        cells = []
        for name, seed in runs:              # the running mean; --eval 30 sampled / greedy (± 95% interval)
            r = at.get((name, seed, mark))
            cells.append(f"{signed(float(r['running_mean']), 1)}; "
                         f"{signed(float(r['sampled_mean']), 2)} ± {r['sampled_ci']} / "
                         f"{signed(float(r['greedy_mean']), 2)} ± {r['greedy_ci']}" if r else "")
        for name in settings:                # the mean once every seed of the setting has the mark
            seeds = [seed for n, seed in runs if n == name]
            sampled = [float(at[name, seed, mark]["sampled_mean"]) for seed in seeds if (name, seed, mark) in at]
            cells.append(signed(sum(sampled) / len(sampled), 2) if len(sampled) == len(seeds) else "")
        print(f"| {mark} | " + " | ".join(cells) + " |")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    logs = sorted((f, *f[:-4].rsplit("-s", 1)) for f in os.listdir(args.keep)     # the runs' logs:
                  if re.fullmatch(r".+-s\d+\.csv", f))                                 # (file, setting, seed)
    settings = sorted({setting for _, setting, _ in logs}, key=lambda n: (n != "defaults", n))
    seeds = sorted({seed for _, _, seed in logs})
    for name, setting, seed in logs:          # a colour a setting (the defaults blue), a line style a seed
        style = dict(color=f"C{settings.index(setting) % 10}", ls=["-", "--", ":", "-."][seeds.index(seed) % 4])
        with open(os.path.join(args.keep, name), newline="") as f:
            log = list(csv.DictReader(f))
        if setting != "defaults":             # a candidate is the defaults' run up to its branch point
            log = log[next((i for i, r in enumerate(log) if float(r["running_mean"]) > 0), 0):]
        ax.plot([int(r["total_steps"]) / 1e6 for r in log], [float(r["running_mean"]) for r in log], lw=1,
                label=f"{setting}, seed {seed}: running mean", **style)
        marks = [r for r in rows if r["name"] == setting and r["seed"] == seed]
        ax.plot([int(r["agent_steps"]) / 1e6 for r in marks], [float(r["sampled_mean"]) for r in marks],
                MARKERS[seeds.index(seed) % 4][0], color=style["color"], ms=4)
    ax.plot([], [], "o", color="0.4", ms=4, label="--eval 30, sampled policy (" + "; ".join(
        f"{MARKERS[i % 4][1]}: seed {seed}" for i, seed in enumerate(seeds)) + ")")
    ax.axhline(SHIPPED_SAMPLED, color="k", lw=0.8, ls=":",
               label=f"the shipped agent, --eval 100 sampled: {SHIPPED_SAMPLED:+.2f}")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("agent steps (millions)")
    ax.set_ylabel("score (points won − points lost)")
    ax.set_title("A night of `python pong_pg.py`, stopped and resumed")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "overnight.png"), dpi=100)
    print("wrote bench/overnight.png")


def bonus_weight(state, beta, games=2):
    """How much an entropy bonus of weight beta weighs in the gradient at this snapshot: over `games`
    games of its own (a batch), |beta * sum_t dH_t| against |sum_t A_t g_t| for W2 and for W1 (the
    ratio of their norms). The first grows with the steps of a batch; the second, A_t standardized,
    more slowly: as games lengthen the bonus weighs more."""
    from pong_pg_fast import BatchGradient, play_episode, play_weights
    from workers import make_env, task_rng
    hyper = state["hyper"]
    if not beta:
        return {"bonus_w2": 0.0, "bonus_w1": 0.0}
    weights = play_weights(state["model"])
    batch = BatchGradient(hyper["hidden"], entropy_sums=True)
    env = make_env()
    env.reset(seed=0)
    for g in range(games):
        batch.add_episode(weights, play_episode(env, weights, task_rng(0, g)), hyper["gamma"])
    env.close()
    with_bonus, H = batch.gradient(entropy=beta), batch.sums_W2.shape[1]
    bonus_W2, bonus_W1T = beta * batch.sums_W2[2], beta * batch.sums_W1T[:, 2 * H:]
    return {"bonus_w2": float(np.linalg.norm(bonus_W2) / np.linalg.norm(with_bonus["W2"] - bonus_W2)),
            "bonus_w1": float(np.linalg.norm(bonus_W1T) / np.linalg.norm(with_bonus["W1"].T - bonus_W1T))}


def diagnose(args):
    """What each kept checkpoint's network does (bench/beat_the_ai.py's measures: saturation, UP share,
    dead units, the returns' spread, the step sizes) and the entropy bonus's weight: a row each in
    keep/diagnosis.csv."""
    from beat_the_ai import diagnose_snapshot

    import checkpoint
    from pong_pg import Hyperparameters
    from training_run import TrainingState
    rows = []
    for name in args.runs:
        if name.endswith(".pkl"):          # an agent file (the shipped agent): its network, no RMSProp cache
            snapshots = [("", name)]
        else:
            run_dir = os.path.join(os.path.expanduser(args.runs_dir), name)
            snapshots = [(path[3:-4], os.path.join(run_dir, path)) for _, path in
                         sorted((kept_steps(run_dir, f[3:-4]), f) for f in os.listdir(run_dir)
                                if re.fullmatch(r"at-(\d+M|zero)\.pkl", f))]
        previous = None
        for mark, path in snapshots:
            state = checkpoint.load(path)
            if "cache" in state:           # a checkpoint: lr and the bonus as its next update uses them
                run = TrainingState.from_checkpoint(state, path)
                lr, beta = run.learning_rate(), run.entropy()
            else:                          # the bonus weighed at the defaults' beta
                lr, beta = None, Hyperparameters().entropy
            rows.append({"run": name, "mark": mark, **diagnose_snapshot(state, previous, lr),
                         **bonus_weight(state, beta)})
            previous = state
            say(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()))
    path = os.path.join(args.keep, "diagnosis.csv")
    kept = [r for r in read_csv(path) if r["run"] not in args.runs] if os.path.exists(path) else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(kept + rows)
    say(f"wrote {path}")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="start or carry on the runs of one setting")
    r.add_argument("--name", default="defaults", help="the setting's name (default: %(default)s)")
    r.add_argument("--seeds", type=int, nargs="+", required=True)
    r.add_argument("--runs", default=os.path.join("~", "runs", "overnight"),
                   help="where the runs' checkpoints live, outside the work tree (default: %(default)s)")
    r.add_argument("--until", type=float, default=100e6, help="agent steps (default: 100e6)")
    r.add_argument("--every", type=float, default=10e6, help="agent steps between evaluations (default: 10e6)")
    r.add_argument("--branch-from", metavar="NAME", help="start from run NAME's at-zero.pkl, same seed")
    r.add_argument("--keep", default=KEEP, help="where the logs and evals are kept (default: bench/overnight)")
    r.add_argument("flags", nargs="*", help="the trainer's flags, after --")
    rep = sub.add_parser("report", help="the table of evaluations and bench/overnight.png")
    rep.add_argument("--settings", nargs="+", metavar="NAME", help="the table's settings (default: all)")
    rep.add_argument("--keep", default=KEEP)
    diag = sub.add_parser("diagnose", help="what the kept checkpoints' networks do: keep/diagnosis.csv")
    diag.add_argument("runs", nargs="+", help="NAME-sSEED, e.g. defaults-s40; or an agent file, e.g. "
                      "checkpoints/pretrained.pkl (its bonus weighed at the defaults' beta)")
    diag.add_argument("--runs-dir", default=os.path.join("~", "runs", "overnight"))
    diag.add_argument("--keep", default=KEEP)
    args = ap.parse_args()
    {"run": run, "report": report, "diagnose": diagnose}[args.command](args)


if __name__ == "__main__":
    main()
