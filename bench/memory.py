"""Does a long run keep flat memory? Train for a while and print the peak resident memory of the whole
process tree (learner and workers) in each minute.

    python bench/memory.py --minutes 10                                   # a new run in a temporary dir
    python bench/memory.py --minutes 60 -- --resume --checkpoint-dir runs/x   # any pong_pg.py flags

Stops the trainer with Ctrl-C (SIGINT) at the end, so a resumed run keeps its progress.
"""
import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from throughput import tree_rss_bytes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("flags", nargs="*", help="pong_pg.py flags, after --")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flags = args.flags if "--checkpoint-dir" in args.flags else args.flags + ["--checkpoint-dir", tmp]
        directory = flags[flags.index("--checkpoint-dir") + 1]
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "pong_pg.py"), "--quiet", *flags],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        start = time.time()
        print("| minute | peak RSS, all processes | episodes so far | longest episode so far (steps) |")
        print("|---:|---:|---:|---:|", flush=True)
        minute, peak = 1, 0
        try:
            while proc.poll() is None:
                peak = max(peak, tree_rss_bytes(proc.pid))
                if time.time() - start >= 60 * minute:
                    with open(os.path.join(directory, "log.csv"), newline="") as f:
                        rows = list(csv.DictReader(f))
                    longest = max((int(r["steps"]) for r in rows), default=0)
                    print(f"| {minute} | {peak / 2 ** 20:.0f} MB | {rows[-1]['episode'] if rows else 0} | "
                          f"{longest:,} |", flush=True)
                    minute, peak = minute + 1, 0
                    if minute > args.minutes:
                        break
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait()


if __name__ == "__main__":
    main()
