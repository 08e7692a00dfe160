"""Benchmark of `taft prep` against its Python peer (prep_peer.py), side by side in one run.

For each dataset size (the default synthetic set and 10x), writes the JSON lines once with
`taft synth`, then alternates taft and the peer REPEAT times, measuring wall time and peak
RSS of each process (wait4). Prints a Markdown table with medians and the speed ratio. Then
a hostile input, one 320 MiB line without a newline: both refuse it; the table shows the
exit code, time and peak RSS of each.
Usage: .venv/bin/python bench/prep.py [--repeat 5] [--taft target/release/taft]
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(cmd, fails=False):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if (code != 0) != fails:
        sys.exit(f"unexpected exit {code}: {' '.join(cmd)}")
    if fails:
        return elapsed, usage.ru_maxrss / 1024, code
    return elapsed, usage.ru_maxrss / 1024  # MiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--taft", default=os.path.join(HERE, "..", "target", "release", "taft"))
    ap.add_argument("--scales", default="1,10")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="taft-bench-prep-")
    rows = []
    try:
        for scale in [int(s) for s in args.scales.split(",")]:
            src = os.path.join(work, f"synthetic-x{scale}.jsonl")
            subprocess.run([args.taft, "synth", "--out", src, "--scale", str(scale)], check=True,
                           stdout=subprocess.DEVNULL)
            n = 5800 * scale
            ours, peer = [], []
            for _ in range(args.repeat):
                ours.append(measure([args.taft, "--log-format", "json", "prep", "--force",
                                     "--input", src, "--out", os.path.join(work, "out")]))
                peer.append(measure([sys.executable, os.path.join(HERE, "prep_peer.py"), src,
                                     os.path.join(work, "peer.parquet")]))
            t_ours = statistics.median(t for t, _ in ours)
            t_peer = statistics.median(t for t, _ in peer)
            rows.append((scale, n, os.path.getsize(src) / 2**20, t_ours, max(m for _, m in ours),
                         t_peer, max(m for _, m in peer)))
        hostile = os.path.join(work, "one-line.jsonl")
        with open(hostile, "wb") as f:
            for _ in range(320):
                f.write(b"a" * 2**20)
        bad = [measure([args.taft, "--log-format", "json", "prep", "--force", "--input", hostile,
                        "--out", os.path.join(work, "out-hostile")], fails=True),
               measure([sys.executable, os.path.join(HERE, "prep_peer.py"), hostile,
                        os.path.join(work, "peer-hostile.parquet")], fails=True)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}; median of {args.repeat} runs\n")
    print("| set | conversations | JSONL MiB | taft s | taft conv/s | taft peak RSS MiB "
          "| Python s | Python conv/s | Python peak RSS MiB | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scale, n, mib, t, m, tp, mp in rows:
        print(f"| x{scale} | {n} | {mib:.1f} | {t:.2f} | {n / t:,.0f} | {m:.0f} | {tp:.2f} "
              f"| {n / tp:,.0f} | {mp:.0f} | {tp / t:.1f}x |")
    print("\n| one 320 MiB line | exit | s | peak RSS MiB |")
    print("|---|---|---|---|")
    for who, (t, m, code) in zip(["taft", "Python"], bad):
        print(f"| {who} | {code} | {t:.2f} | {m:.0f} |")


if __name__ == "__main__":
    main()
