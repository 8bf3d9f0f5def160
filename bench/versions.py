"""The trainer's speed at two or more commits, measured alternately on one machine.

Each commit is checked out into a temporary git worktree; then, round after round, each commit's
`pong_pg.py --workers N` trains from a fresh start for --seconds after its first episode: the agent
steps per second, and the learner's CPU microseconds per agent step (from /proc, Linux). One run at 16
workers on 2 cores is noise: compare the medians of several rounds, taken alternately so that a
machine that changes speed changes every commit alike.

    python bench/versions.py --commits c206ecb HEAD --workers 2 16 --rounds 4
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from step_costs import cpu_seconds

from watch import read_log


def one_run(tree, workers, seconds):
    """(agent steps/s, the learner's CPU us per agent step) of one run of tree's pong_pg.py."""
    with tempfile.TemporaryDirectory() as run_dir:
        log = os.path.join(run_dir, "log.csv")
        proc = subprocess.Popen([sys.executable, os.path.join(tree, "pong_pg.py"), "--quiet", "--workers",
                                 str(workers), "--checkpoint-dir", run_dir, "--save-every", "1000000"],
                                cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not read_log(log):
            time.sleep(0.05)
        steps, cpu, start = int(read_log(log)[-1]["total_steps"]), cpu_seconds(proc.pid), time.time()
        time.sleep(seconds)
        steps, cpu = int(read_log(log)[-1]["total_steps"]) - steps, cpu_seconds(proc.pid) - cpu
        rate = steps / (time.time() - start)
        proc.terminate()
        proc.wait(timeout=60)
    return rate, 1e6 * cpu / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", nargs="+", required=True, help="commits to compare (e.g. c206ecb HEAD)")
    ap.add_argument("--workers", nargs="+", type=int, default=[2, 16])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=25, help="measured seconds of each run (default: 25)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as trees:
        paths = {}
        for commit in args.commits:
            paths[commit] = os.path.join(trees, commit.replace("/", "_"))
            subprocess.run(["git", "worktree", "add", "--detach", paths[commit], commit], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            for r in range(args.rounds):
                for workers in args.workers:
                    for commit in args.commits:
                        rate, learner = one_run(paths[commit], workers, args.seconds)
                        results.setdefault((commit, workers), []).append((rate, learner))
                        print(f"round {r + 1}, {workers} workers, {commit}: {rate:,.0f} steps/s, learner "
                              f"{learner:.2f} us/step", flush=True)
        finally:
            for path in paths.values():
                subprocess.run(["git", "worktree", "remove", "--force", path], cwd=ROOT, capture_output=True)
    print("\n| workers | commit | steps/s, median (runs) | learner us/step, median (runs) |\n|---:|---|---|---|")
    for (commit, workers), runs in sorted(results.items(), key=lambda kv: (kv[0][1], args.commits.index(kv[0][0]))):
        rates, learners = zip(*runs, strict=True)
        print(f"| {workers} | {commit} | {statistics.median(rates):,.0f} ({', '.join(f'{x:,.0f}' for x in rates)}) "
              f"| {statistics.median(learners):.2f} ({', '.join(f'{x:.2f}' for x in learners)}) |")


if __name__ == "__main__":
    main()
