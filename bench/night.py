"""What a night of training gives: one run of the defaults of its time (lr 1e-3, no entropy bonus, the
flags it pins), carried across machines in segments.

A night (80M agent steps: about 7 hours on a slow 2-core machine) is longer than a machine may stay
up. So the run went in segments: the first a plain `python pong_pg.py`; each later one from the agent
the one before left, with `--init-from` (a fresh RMSProp cache, under which the learning rate now
warms up; the night's 8 segments were trained without that warm-up). Kept in bench/night/: each
segment's log (segN.csv) and the evaluations (evals.csv); the newest agent (5 MB) outside the tree,
in --agent (the study is closed and its agent is not kept: `run` goes on from an --agent you have).
bench/overnight.py measures the night of today's defaults as a user runs it, with --resume.

    python bench/night.py run --minutes 90     # one more segment: train, stop, keep its log and agent, evaluate
    python bench/night.py finish DIR           # the same for a segment trained by hand in DIR (stopped first)
    python bench/night.py plot                 # the curve of all segments: bench/night.png, and a table

Minutes do not add up across segments (machines differ, a segment may share its machine): the curve
is drawn against agent steps, and the running mean is carried on across the segments' episodes.
"""
import argparse
import os

from segments import ROOT, SegmentFailed, evals, finish, segment_logs, stitched, train_segment

MEASURED_WITH = ["--lr", "1e-3", "--entropy", "0"]     # the night's settings: the trainer's defaults then

NIGHT = os.path.join(ROOT, "bench", "night")
AGENT = os.path.join("~", "runs", "night", "agent.pkl")


def plot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, means, _, starts = stitched(NIGHT)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot([s / 1e6 for s in steps], means, lw=1, label="running mean score")
    for r in evals(NIGHT):
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
    run.add_argument("--agent", default=AGENT, help="the newest agent, outside the tree (default: %(default)s)")
    finish_ = sub.add_parser("finish", help="keep the log and agent of a segment trained by hand")
    finish_.add_argument("dir")
    finish_.add_argument("--agent", default=AGENT, help="where its agent goes (default: %(default)s)")
    sub.add_parser("plot", help="draw the curve of all segments")
    args = ap.parse_args()
    if args.command == "run":
        run_dir = args.dir or os.path.join(ROOT, "runs", "night", f"seg{len(segment_logs(NIGHT)) + 1}")
        try:
            train_segment(NIGHT, run_dir, MEASURED_WITH, os.path.expanduser(args.agent), minutes=args.minutes)
        except SegmentFailed as e:
            raise SystemExit(f"night: {e}") from None
    elif args.command == "finish":
        finish(NIGHT, args.dir, os.path.expanduser(args.agent))
    else:
        plot()


if __name__ == "__main__":
    main()
