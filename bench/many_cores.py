"""Measurements on a machine with more cores than CI's 2 (Linux; nothing in the project needs one).

    python bench/many_cores.py --throughput 15                 # (a) and (c) of bench/throughput.py on all cores
    python bench/many_cores.py --cores 8 --seeds 0 1 --minutes 4 --out runs/cores8
    python bench/many_cores.py --cores 16 --seeds 0 --minutes 3 --out runs/cores16

--cores K splits this machine's cores into groups of K and runs the plain `python pong_pg.py --seed S`
in each group at once, pinned to its K cores: each is what a K-core machine would do (pong_pg starts
one worker per core it may use, so K workers), until its running mean reaches --target (0: it beats
the built-in AI) or it has trained --minutes. More seeds than groups wait for a free group. The groups
share the memory bus and the caches, so their minutes are if anything slower than a K-core machine's.
Prints (and writes to --out/results.md) minutes, episodes and agent steps to the target, and the
steps/s of each run.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

from learning_curves import first_reaching

from watch import read_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def throughput(seconds):
    """The emulator's limit with one process per core, pong_pg with the default workers between two
    measurements of it, and the ratio."""
    import throughput as bench
    cores = len(os.sched_getaffinity(0))
    before = bench.random_players("emulator", cores, seconds)
    rate, peak, length = bench.this_trainer(cores, seconds)
    after = bench.random_players("emulator", cores, seconds)
    print(f"| {cores} cores | emulator {before:,.0f} / {after:,.0f} steps/s | pong_pg --workers {cores}: "
          f"{rate:,.0f} steps/s ({length:,.0f}-step games), peak {peak / 2**20:,.0f} MB | "
          f"{2 * rate / (before + after):.2f} of the emulator |", flush=True)


def start(run_dir, seed, cores, extra):
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", "--seed", str(seed),
           "--checkpoint-dir", run_dir, *extra]
    out = open(os.path.join(run_dir, "out.log"), "a")    # noqa: SIM115 (closed with the run)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))
    return proc, out


def result_line(name, rows, target):
    """One table row: minutes, episodes, steps to the target (or how far the run got), steps/s."""
    if not rows:
        return f"| {name} | no episode finished | | | |"
    last = rows[-1]
    rate = int(last["total_steps"]) / max(float(last["wall_seconds"]), 1e-9)
    hit = first_reaching(rows, target)
    if hit:
        return (f"| {name} | {float(hit['wall_seconds']) / 60:.2f} | {int(hit['episode']):,} | "
                f"{int(hit['total_steps']):,} | {rate:,.0f} |")
    return (f"| {name} | not within {float(last['wall_seconds']) / 60:.1f} (reached "
            f"{float(last['running_mean']):+.1f}) | {int(last['episode']):,} | {int(last['total_steps']):,} | "
            f"{rate:,.0f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--throughput", type=float, metavar="SECONDS",
                    help="measure the throughput on all cores instead (SECONDS per measurement)")
    ap.add_argument("--cores", type=int, help="cores per run (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", type=float, default=0.0)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", default="runs/many_cores")
    ap.add_argument("pong_pg_flags", nargs="*", help="after --: more flags for pong_pg.py (--workers 32)")
    args = ap.parse_args()
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench/many_cores.py pins runs to cores with sched_setaffinity: Linux only")
    if args.throughput:
        return throughput(args.throughput)

    cores = sorted(os.sched_getaffinity(0))
    k = args.cores or len(cores)
    groups = [set(cores[i:i + k]) for i in range(0, len(cores) - k + 1, k)]
    if not groups:
        sys.exit(f"--cores {k}: this machine has {len(cores)}")
    print(f"{len(cores)} cores: {len(groups)} group(s) of {k}", flush=True)
    waiting = [(f"{k} cores, seed {s}" + (" " + " ".join(args.pong_pg_flags) if args.pong_pg_flags else ""),
                os.path.join(args.out, f"cores{k}-seed{s}"), s) for s in args.seeds]
    running, lines = {}, []                   # group index -> (name, dir, proc, out)
    try:
        while waiting or running:
            for g in range(len(groups)):
                if g not in running and waiting:
                    name, run_dir, seed = waiting.pop(0)
                    running[g] = (name, run_dir, *start(run_dir, seed, groups[g], args.pong_pg_flags))
            time.sleep(1)
            for g, (name, run_dir, proc, out) in list(running.items()):
                rows = read_log(os.path.join(run_dir, "log.csv"))
                over = rows and (first_reaching(rows, args.target)
                                 or float(rows[-1]["wall_seconds"]) >= 60 * args.minutes)
                if over or proc.poll() is not None:
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)     # saves its checkpoint, as Ctrl-C would
                        proc.wait()
                    out.close()
                    lines.append(result_line(name, read_log(os.path.join(run_dir, "log.csv")), args.target))
                    print(lines[-1], flush=True)
                    del running[g]
    finally:
        for _, _, proc, out in running.values():
            proc.send_signal(signal.SIGINT)
            proc.wait()
            out.close()
    with open(os.path.join(args.out, "results.md"), "a") as f:
        f.write(f"| run | minutes to running mean {args.target:+g} | episodes | agent steps | steps/s |\n"
                "|---|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
