"""Past the plateau: which settings take a trained agent further, from the same starting agent.

After about an hour the running mean flattens near +9 to +12. What may change to go further, the
algorithm staying as it is: the learning rate (a lower one from a trained agent is a step in a
schedule over agent steps), RMSProp's decay, the discount. Each candidate below trains on from the same
agent, bench/plateau/start.pkl (the first agent shipped in checkpoints/: 57 minutes of training, 20.1M
agent steps), for --steps agent steps, once per seed, with the same number of workers (the weights'
staleness depends on it). Runs are kept in segments (bench/segments.py): logs and evaluations in
bench/plateau/NAME-sSEED/, each run's newest agent outside the tree in --agents DIR/NAME-sSEED.pkl, so
a run stopped by the end of a sitting goes on later where its agent is; the last segment of a run ends
with --eval 30 of its agent.

    python bench/plateau.py run --minutes 120                 # train the least advanced runs, one at a time
    python bench/plateau.py run --minutes 12 --parallel 8     # 8 runs at once, each on its own 2 cores (Linux)
    python bench/plateau.py report              # the table, bench/plateau.png and bench/shipped_agent_on.png

The study goes in stages: all candidates to --steps 2e6, then only the best on to 5e6 (--candidates
...). The study is closed: the tree keeps its logs and evaluations and the starting agent, and
`report` reads logs only; a run whose agent is not in --agents is skipped by `run`.

Minutes mean little here (runs share machines, and stop and go on): the study compares runs at equal
agent steps.
"""
import argparse
import bisect
import os
import threading
import time

from segments import ROOT, SegmentFailed, evals, evaluate_agent, segment_logs, steps_done, stitched, train_segment

from cli import SHIPPED_AGENT
from training_run import load_agent

PLATEAU = os.path.join(ROOT, "bench", "plateau")
START = os.path.join(PLATEAU, "start.pkl")
START_SCORE = 11.71         # the starting agent's mean score: --eval 100, sampled policy (± 0.85, 95% CI)
SHIPPED = ("decay-0.99-warmup", 2)   # checkpoints/pretrained.pkl is this run's agent (its total_steps say where)
MEASURED_WITH = ["--lr", "1e-3", "--entropy", "0"]     # the trainer's defaults when this study ran
CANDIDATES = {              # flags on top of those: lr 1e-3, no entropy bonus, RMSProp decay 0.9, gamma 0.99
    "defaults": MEASURED_WITH,
    "decay-0.99": [*MEASURED_WITH, "--decay-rate", "0.99"],        # how the starting agent was trained
    "lr-3e-4": [*MEASURED_WITH, "--decay-rate", "0.99", "--lr", "3e-4"],
    "lr-1e-4": [*MEASURED_WITH, "--decay-rate", "0.99", "--lr", "1e-4"],
    "decay-0.99-warmup": [*MEASURED_WITH, "--decay-rate", "0.99"],   # decay-0.99 with the learning rate's
                                    # warm-up after --init-from (pong_pg.learning_rate): its runs predate it
    "gamma-0.98": [*MEASURED_WITH, "--decay-rate", "0.99", "--gamma", "0.98"],   # credit within ~50 steps of
}                                                                # a point's end: the moves just before a miss
SEEDS = (1, 2)
AGENTS = os.path.join("~", "runs", "plateau")
MILESTONES = (1e6, 2e6, 5e6, 10e6, 20e6, 40e6, 60e6, 80e6)
LAST_EPISODES = 100         # the report's "last scores": the mean score of a run's last this many episodes


def runs(names, seeds):
    return [(name, seed, os.path.join(PLATEAU, f"{name}-s{seed}")) for name in names for seed in seeds]


def train(names, seeds, steps, minutes, workers, parallel, agents):
    """Train the runs that have fewer than `steps` agent steps, the least advanced first, until
    `minutes` are up; `parallel` at once, each pinned to its own `workers` cores. agents: the directory
    of the runs' newest agents."""
    deadline = time.time() + 60 * minutes
    agent = {r[2]: os.path.join(agents, f"{r[0]}-s{r[1]}.pkl") for r in runs(names, seeds)}
    dropped = [r for r in runs(names, seeds) if segment_logs(r[2]) and not os.path.exists(agent[r[2]])]
    for name, seed, _ in dropped:
        print(f"{name} seed {seed}: skipped, its agent is not in {agents}")
    lock, busy, failed = threading.Lock(), set(), []
    all_cores = sorted(os.sched_getaffinity(0)) if parallel > 1 else None

    def next_run():
        with lock:
            done = {r: steps_done(r[2]) for r in runs(names, seeds) if r[2] not in busy and r not in dropped}
            waiting = [r for r in done if done[r] < steps]
            if not waiting:
                return None
            run = min(waiting, key=done.get)
            busy.add(run[2])
            return run

    def lane(k):
        cores = all_cores[k * workers:(k + 1) * workers] if all_cores else None
        while time.time() < deadline - 30 and (run := next_run()):
            name, seed, keep = run
            run_dir = os.path.join(ROOT, "runs", "plateau", f"{name}-s{seed}",
                                   f"seg{len(segment_logs(keep)) + 1}")
            print(f"{name} seed {seed}: {steps_done(keep):,} agent steps so far, training on in {run_dir}",
                  flush=True)
            try:
                train_segment(keep, run_dir, ["--workers", workers, *CANDIDATES[name]], agent[keep], seed=seed,
                              first_from=START, minutes=(deadline - time.time()) / 60, until_steps=steps,
                              evaluate=False, cores=cores)
            except SegmentFailed as e:
                failed.append(f"{name} seed {seed}: {e}")     # this lane stops; the others go on
                return
            if steps_done(keep) >= steps:
                evaluate_agent(keep, len(segment_logs(keep)), agent[keep], cores=cores)
            with lock:
                busy.discard(keep)

    if parallel > 1 and len(all_cores) < parallel * workers:
        raise SystemExit(f"--parallel {parallel} runs of {workers} workers need {parallel * workers} cores; "
                         f"this machine has {len(all_cores)}")
    lanes = [threading.Thread(target=lane, args=(k,)) for k in range(parallel)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    if failed:
        raise SystemExit("\n".join(failed))


def trailing_mean(scores, k):
    """The mean score of episode k and the LAST_EPISODES - 1 before it (fewer at a run's start). The
    study compares runs by it, not by the running mean: that starts at the first episode's score,
    which from a trained agent is one game's luck, and forgets it only slowly."""
    window = scores[max(0, k - LAST_EPISODES + 1):k + 1]
    return sum(window) / len(window)


def mean_at(steps, scores, mark):
    """trailing_mean of the last episode that ends at or before `mark` agent steps, as text ('' before
    the run gets there)."""
    if steps[-1] < mark:
        return ""
    return f"{trailing_mean(scores, bisect.bisect_right(steps, mark) - 1):+.1f}"


def report(names, seeds):
    """Each run's mean score at the milestones, its last scores and its --eval 30, and the curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = " | ".join(f"{m / 1e6:g}M" for m in MILESTONES)
    print(f"| candidate | seed | agent steps | first {LAST_EPISODES} scores | mean of {LAST_EPISODES} scores up "
          f"to {head} | last {LAST_EPISODES} scores | --eval 30 sampled (won) | greedy (won) |")
    print("|---|---:|---:|---:|" + "---:|" * len(MILESTONES) + "---:|---:|---:|")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(names):
        for j, (_, seed, keep) in enumerate(runs([name], seeds)):
            steps, _, scores, _ = stitched(keep)
            if not steps:
                continue
            at = [mean_at(steps, scores, mark) for mark in MILESTONES]
            final = [r for r in evals(keep) if int(r["agent_steps"]) == steps[-1]]
            sampled = f"{final[-1]['sampled_mean']} ({final[-1]['sampled_won']})" if final else ""
            greedy = f"{final[-1]['greedy_mean']} ({final[-1]['greedy_won']})" if final else ""
            first = trailing_mean(scores, LAST_EPISODES - 1) if len(scores) >= LAST_EPISODES else None
            print(f"| {name} | {seed} | {steps[-1] / 1e6:.1f}M | {'' if first is None else f'{first:+.1f}'} | "
                  f"{' | '.join(at)} | "
                  f"{trailing_mean(scores, len(scores) - 1):+.1f} | {sampled} | {greedy} |")
            full = range(LAST_EPISODES - 1, len(scores))          # from the first full window on
            ax.plot([steps[k] / 1e6 for k in full], [trailing_mean(scores, k) for k in full], color=f"C{i}",
                    lw=1, ls=("-", "--", ":")[j % 3], label=name if j == 0 else None)
    ax.axhline(START_SCORE, color="grey", lw=1, ls="--", label="the starting agent")
    ax.set_xlabel("agent steps from the starting agent (millions)")
    ax.set_ylabel(f"mean score of the last {LAST_EPISODES} episodes")
    ax.set_title("Training on from the same trained agent: one line a run, one colour a candidate")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "plateau.png"), dpi=100)
    plt.close(fig)
    shipped_curve(plt)


def shipped_curve(plt):
    """bench/shipped_agent_on.png: the shipped agent's training after its first 57 minutes, against
    all its agent steps: the mean of 100 scores, the --eval 30 of each kept agent, each restart from
    the agent file (a new segment) as a thin line."""
    name, seed = SHIPPED
    keep = runs([name], [seed])[0][2]
    start_steps = load_agent(START)["total_steps"]      # 20.1M: its first 57 minutes
    until = load_agent(SHIPPED_AGENT)["total_steps"] - start_steps       # this run's steps up to it
    steps, _, scores, starts = stitched(keep)
    full = [k for k in range(LAST_EPISODES - 1, len(scores)) if steps[k] <= until]   # not what came after
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([(start_steps + steps[k]) / 1e6 for k in full], [trailing_mean(scores, k) for k in full],
            color="C4", lw=1, label=f"mean of the last {LAST_EPISODES} training games")
    marks = [r for r in evals(keep) if int(r["agent_steps"]) <= until]
    starts = [x for x in starts if x <= until]
    for mode, marker in (("sampled", "o"), ("greedy", "s")):
        ax.plot([(start_steps + int(r["agent_steps"])) / 1e6 for r in marks],
                [float(r[f"{mode}_mean"]) for r in marks], marker, color="black", mfc="none" if
                mode == "greedy" else "black", ls="none", label=f"--eval 30, {mode}")
    for k, x in enumerate(starts):
        ax.axvline((start_steps + x) / 1e6, color="grey", lw=0.5, ls=":", label=None if k else
                   "a restart from its agent file")
    ax.axhline(START_SCORE, color="grey", lw=1, ls="--", label="its agent at 57 minutes, --eval 100 sampled")
    ax.set_xlabel("agent steps since the random start (millions)")
    ax.set_ylabel("score")
    ax.set_title(f"The shipped agent after its first 57 minutes: {name} seed {seed}", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "shipped_agent_on.png"), dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the least advanced runs for a while")
    run.add_argument("--minutes", type=float, required=True)
    run.add_argument("--steps", type=float, default=5e6, help="agent steps a run trains (default: 5M)")
    run.add_argument("--workers", type=int, default=2, help="workers of every run (default: 2)")
    run.add_argument("--parallel", type=int, default=1, help="runs at once, each on its own cores (Linux)")
    run.add_argument("--agents", default=AGENTS, help="the runs' newest agents, outside the tree "
                     "(default: %(default)s)")
    rep = sub.add_parser("report", help="the table and the picture")
    for p in (run, rep):
        p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
        p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = ap.parse_args()
    if args.command == "run":
        train(args.candidates, args.seeds, args.steps, args.minutes, args.workers, args.parallel,
              os.path.expanduser(args.agents))
    else:
        report(args.candidates, args.seeds)


if __name__ == "__main__":
    main()
