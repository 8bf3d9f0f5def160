r"""How fast does pong_pg beat the built-in AI? Learning curves over seeds and settings.

Each run is a plain `python pong_pg.py` (all cores) with one seed and one setting, stopped when the
running mean score reaches --target (0: it beats the built-in AI) or after --minutes. Runs go one at a
time, so each has the whole machine, as a user's run would.

    python bench/learning_curves.py --seeds 0 1 2                  # the defaults, 3 seeds
    python bench/learning_curves.py --lr 1e-3 2e-3 --seeds 0 1 2   # compare learning rates
    python bench/learning_curves.py --decay-rate 0.9 --seeds 0 1 2 # or RMSProp decays, or --workers 2 4
    python bench/learning_curves.py --preset 2016 --workers 1      # the 2016 script's settings
    python bench/learning_curves.py --init-from checkpoints/pretrained.pkl --target 15 --lr 1e-3 3e-4 \
        --minutes 60 --out runs/plateau                            # settings for training on an agent

Writes into --out: one run directory per (setting, seed) with its checkpoint and log (an interrupted
study resumes the runs it had begun), results.md (time, episodes and steps to the target per run) and
learning_curves.png (running mean against wall time). Existing finished runs are reused.
"""
import argparse
import itertools
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from watch import read_log

MILESTONES = (-15, -10, -5, 0)       # running means on the way to beating the built-in AI


def first_reaching(rows, target):
    return next((r for r in rows if float(r["running_mean"]) >= target), None)


def run_until(directory, flags, target, minutes, new_run_flags=()):
    """Train in directory until the running mean reaches target or the run has trained `minutes`;
    new_run_flags (--init-from FILE) are given only when the run starts, not when it is resumed."""
    log = os.path.join(directory, "log.csv")
    rows = read_log(log)
    if first_reaching(rows, target) or (rows and float(rows[-1]["wall_seconds"]) >= 60 * minutes):
        return rows                                     # finished earlier
    resume = ["--resume"] if os.path.exists(os.path.join(directory, "pong_pg.pkl")) else list(new_run_flags)
    cmd = [sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", "--checkpoint-dir", directory,
           *resume, *flags]
    print(" ".join(cmd[1:]), flush=True)
    with open(os.path.join(directory, "out.log"), "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while proc.poll() is None:
                time.sleep(2)
                rows = read_log(log)
                if rows:
                    print(f"\r  episode {rows[-1]['episode']}, running mean {float(rows[-1]['running_mean']):+.2f}, "
                          f"{float(rows[-1]['wall_seconds']) / 60:.1f} min", end="", flush=True)
                if first_reaching(rows, target) or (rows and float(rows[-1]["wall_seconds"]) >= 60 * minutes):
                    break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)         # saves a checkpoint: the run can be continued
                proc.wait()
    print(flush=True)
    return read_log(log)


def plot(results, target, path, by_steps=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    settings = sorted({r["setting"] for r in results})
    seeds = sorted({r["seed"] for r in results})
    for r in results:
        color = colors[settings.index(r["setting"]) % len(colors)]          # a color per setting,
        style = ["-", "--", ":", "-."][seeds.index(r["seed"]) % 4]          # a line style per seed
        x = [float(row["total_steps"]) / 1e6 if by_steps else float(row["wall_seconds"]) / 60 for row in r["rows"]]
        ax.plot(x, [float(row["running_mean"]) for row in r["rows"]], color=color, ls=style, lw=1.5,
                label=f"{r['setting']}, seed {r['seed']}")
    ax.axhline(target, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("agent steps (millions)" if by_steps else "wall time (minutes)")
    ax.set_ylabel("running mean score (0.99)")
    ax.set_ylim(-21.5, max(5, target + 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_directory(out, setting, seed):
    return os.path.join(out, setting.replace(", ", "_").replace(" ", "") + f"_seed{seed}")


def setting_of(name):
    """'lr0.002_4workers_seed1' -> ('lr 0.002, 4 workers', 1): the inverse of run_directory."""
    parts, seed = name.rsplit("_seed", 1)
    words = [re.sub(r"(?<=[a-z])(?=[\d.])|(?<=\d)(?=[a-z])", " ", part) for part in parts.split("_")]
    return ", ".join(words), int(seed)


def planned_runs(args):
    """(setting, seed, flags) for every combination of the candidates given on the command line."""
    for preset, lr, entropy, decay, gamma, workers in itertools.product(args.preset, args.lr, args.entropy,
                                                                        args.decay_rate, args.gamma, args.workers):
        flags, names = [], []
        if preset is not None:
            flags += ["--preset", preset]
            names.append(f"preset {preset}")
        if lr is not None:
            flags += ["--lr", str(lr)]
            names.append(f"lr {lr:g}")
        if entropy is not None:
            flags += ["--entropy", str(entropy)]
            names.append(f"entropy {entropy:g}")
        if decay is not None:
            flags += ["--decay-rate", str(decay)]
            names.append(f"decay {decay:g}")
        if gamma is not None:
            flags += ["--gamma", str(gamma)]
            names.append(f"gamma {gamma:g}")
        if workers is not None:
            flags += ["--workers", str(workers)]
            names.append(f"{workers} workers")
        for seed in args.seeds:
            yield ", ".join(names) or "defaults", seed, flags + ["--seed", str(seed)]


def report(results, target, out, by_steps=False):
    lines = [f"| setting | seed | minutes to running mean >= {target:g} | episodes | agent steps |",
             "|---|---:|---:|---:|---:|"]
    for r in results:
        r["hit"] = hit = first_reaching(r["rows"], target)
        if hit:
            lines.append(f"| {r['setting']} | {r['seed']} | {float(hit['wall_seconds']) / 60:.1f} | "
                         f"{int(hit['episode']):,} | {int(hit['total_steps']):,} |")
        elif r["rows"]:
            last = r["rows"][-1]
            lines.append(f"| {r['setting']} | {r['seed']} | not within {float(last['wall_seconds']) / 60:.1f} "
                         f"(reached {float(last['running_mean']):+.1f}) | {int(last['episode']):,} | "
                         f"{int(last['total_steps']):,} |")
    lines += ["", "| setting | seed | " + " | ".join(f"agent steps to {m:g}" for m in MILESTONES) + " |",
              "|---|---:|" + "---:|" * len(MILESTONES)]
    for r in results:       # a milestone not reached is a lower bound: "> the steps the run played"
        played = int(r["rows"][-1]["total_steps"]) if r["rows"] else 0
        cells = [f"{int(hit['total_steps']):,}" if (hit := first_reaching(r["rows"], m)) else f"> {played:,}"
                 for m in MILESTONES]
        lines.append(f"| {r['setting']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", f"| setting | runs reaching {target:g} | median minutes | median agent steps |",
              "|---|---:|---:|---:|"]
    for setting in dict.fromkeys(r["setting"] for r in results):
        runs = [r for r in results if r["setting"] == setting and r["rows"]]
        # a run that missed the target counts as slower than every run that reached it
        minutes = sorted(float(r["hit"]["wall_seconds"]) / 60 if r["hit"] else float("inf") for r in runs)
        steps = sorted(int(r["hit"]["total_steps"]) if r["hit"] else float("inf") for r in runs)
        if runs:
            median = len(runs) // 2
            lines.append(f"| {setting} | {sum(bool(r['hit']) for r in runs)} of {len(runs)} | "
                         + (f"{minutes[median]:.1f} | {steps[median]:,} |" if minutes[median] < float("inf")
                            else "not reached | not reached |"))
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    plot(results, target, os.path.join(out, "learning_curves.png"), by_steps)
    print(f"wrote {os.path.join(out, 'results.md')} and learning_curves.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", nargs="+", default=[None], help="pong_pg presets (2016: the 2016 script's settings)")
    ap.add_argument("--lr", type=float, nargs="+", default=[None], help="learning rates (default: pong_pg's)")
    ap.add_argument("--entropy", type=float, nargs="+", default=[None], help="entropy bonuses (default: pong_pg's)")
    ap.add_argument("--decay-rate", type=float, nargs="+", default=[None], help="RMSProp decays")
    ap.add_argument("--gamma", type=float, nargs="+", default=[None], help="reward discounts")
    ap.add_argument("--workers", type=int, nargs="+", default=[None], help="worker counts (default: pong_pg's)")
    ap.add_argument("--init-from", metavar="FILE", help="start every run from this agent's weights (pong_pg.py "
                    "--init-from), to compare settings from the same trained agent")
    ap.add_argument("--target", type=float, default=0.0, help="running mean to reach (default: %(default)s)")
    ap.add_argument("--minutes", type=float, default=30, help="give up after this much training time")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "learning_curves"))
    ap.add_argument("--report-only", action="store_true", help="train nothing: report every run in --out")
    ap.add_argument("--by-steps", action="store_true", help="draw the running mean against agent steps, not time")
    args = ap.parse_args()

    results = []
    if args.report_only:
        runs = sorted((setting_of(name) + (name,) for name in os.listdir(args.out) if "_seed" in name),
                      key=lambda run: (run[0] != "defaults", run[0], run[1]))      # the defaults first
        for setting, seed, name in runs:
            rows = read_log(os.path.join(args.out, name, "log.csv"))
            results.append({"setting": setting, "seed": seed, "rows": rows})
    else:
        for setting, seed, flags in planned_runs(args):
            directory = run_directory(args.out, setting, seed)
            os.makedirs(directory, exist_ok=True)
            rows = run_until(directory, flags, args.target, args.minutes,
                             ["--init-from", args.init_from] if args.init_from else [])
            results.append({"setting": setting, "seed": seed, "rows": rows})
    report(results, args.target, args.out, args.by_steps)


if __name__ == "__main__":
    main()
