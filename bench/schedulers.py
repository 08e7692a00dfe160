"""Orchestration: the demo graph (26 steps after fan-out) run by `taft run` and by Airflow 3.

Side by side on the same small data (`--set prep.synthetic=…`), each round into fresh store
roots: `taft run --jobs 4` (independent steps in parallel, cores shared), `taft run --jobs 1`,
and `airflow dags test` on the DAG `taft render airflow --mode local` writes (a BashOperator
per step, run one after another). Then each again with every step up to date: what is left is
the orchestrator's own cost. Checks that Airflow's outputs have `taft run --jobs 1`'s
fingerprints. Prints a Markdown table of medians and peak RSS (the largest process of the
run's process tree, from getrusage: a training step from scratch, the orchestrator itself or a
step checking its manifest when all is up to date).
Usage: .venv/bin/python bench/schedulers.py [--rounds 3] [--taft target/release/taft]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = "prep.synthetic={seed: 42, train: 200, val: 40, test: 40, unlabeled: 200, learnable: true}"
AIRFLOW = os.path.join(ROOT, ".tools/airflow/bin/airflow")


# Runs a command and prints, last, the largest RSS of its process tree (KiB).
PROBE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def timed(cmd, env=None):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *cmd], cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return wall, int(proc.stdout.strip().splitlines()[-1]) / 1024


def fingerprints(store):
    out = {}
    for step in sorted(os.listdir(store)):
        with open(os.path.join(store, step, "_MANIFEST.json")) as f:
            out[step] = json.load(f)["fingerprint"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--taft", default=os.path.join(ROOT, "target/release/taft"))
    args = ap.parse_args()
    taft = os.path.abspath(args.taft)
    if not os.path.exists(AIRFLOW):
        sys.exit("Airflow missing: run scripts/bootstrap --tests")
    work = tempfile.mkdtemp(prefix="taft-bench-sched-")
    home = os.path.join(work, "airflow")
    os.makedirs(os.path.join(home, "dags"))
    env = dict(os.environ, AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=os.path.join(home, "dags"),
               TAFT_THREADS=str(os.cpu_count()))
    timed([AIRFLOW, "db", "migrate"], env)
    results = {k: {"fresh": [], "rss": [], "again": [], "again_rss": []} for k in ["jobs4", "jobs1", "airflow"]}
    try:
        for r in range(args.rounds):
            stores = {k: os.path.join(work, f"{k}-{r}") for k in results}
            dag = os.path.join(home, "dags", "demo.py")
            subprocess.run([taft, "render", "airflow", "workflows/demo.yaml", "--mode", "local", "--store",
                            stores["airflow"], "--set", DATA, "-o", dag], cwd=ROOT, check=True)
            commands = {
                "jobs4": [taft, "run", "workflows/demo.yaml", "--jobs", "4", "--store", stores["jobs4"], "--set", DATA],
                "jobs1": [taft, "run", "workflows/demo.yaml", "--jobs", "1", "--store", stores["jobs1"], "--set", DATA],
                "airflow": [AIRFLOW, "dags", "test", "demo"],
            }
            for name, cmd in commands.items():
                for phase in ["fresh", "again"]:
                    wall, rss = timed(cmd, env)
                    results[name][phase].append(wall)
                    results[name]["rss" if phase == "fresh" else "again_rss"].append(rss)
            if fingerprints(stores["airflow"]) != fingerprints(stores["jobs1"]):
                sys.exit("Airflow's outputs differ from taft run --jobs 1's")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda xs: statistics.median(xs)
    rss = lambda xs: max(xs)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; rounds: {args.rounds}")
    print("| orchestrator | from scratch (s) | all up to date (s) | peak RSS from scratch (MiB) | peak RSS up to date (MiB) |")
    print("|---|---|---|---|---|")
    names = {"jobs4": "`taft run --jobs 4`", "jobs1": "`taft run --jobs 1`", "airflow": "Airflow 3 `dags test`, local mode"}
    for k, label in names.items():
        v = results[k]
        print(f"| {label} | {med(v['fresh']):.1f} | {med(v['again']):.1f} | {rss(v['rss']):.0f} | {rss(v['again_rss']):.0f} |")
    a, j1, j4 = (med(results[k]["again"]) for k in ["airflow", "jobs1", "jobs4"])
    print(f"up-to-date rerun: Airflow / taft run --jobs 1 = {a / j1:.1f}x; from scratch: "
          f"Airflow / taft run --jobs 4 = {med(results['airflow']['fresh']) / med(results['jobs4']['fresh']):.2f}x, "
          f"jobs 1 / jobs 4 = {med(results['jobs1']['fresh']) / med(results['jobs4']['fresh']):.2f}x")


if __name__ == "__main__":
    main()
