"""Wall time and peak RSS per step of a `taft run`, from its JSON log and the outputs'
manifests, as a Markdown table (bench/RESULTS.md):

    taft --log-format json run WORKFLOW --store STORE 2> run.log
    python bench/steps_table.py run.log STORE

Steps of one fan-out (`taft-status-1`, `taft-status-2`, ...) are one row: the number of runs,
the median wall time with its range, and the largest peak RSS.
"""

import datetime
import json
import os
import re
import statistics
import sys


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def main(log, store):
    rss = {}
    with open(log, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("message") == "committed" and "peak_rss_mib" in event:
                out = event.get("span", {}).get("out", "")
                rss[os.path.basename(out.rstrip("/"))] = event["peak_rss_mib"]
    rows = {}
    for name in sorted(os.listdir(store)):
        path = os.path.join(store, name, "_MANIFEST.json")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        seconds = (when(manifest["finished_at"]) - when(manifest["started_at"])).total_seconds()
        group = re.sub(r"-\d+$", "", name)
        rows.setdefault(group, []).append((seconds, rss.get(name)))
    print("| step | runs | wall s, median (min–max) | peak RSS MiB (max) |")
    print("|---|---|---|---|")
    total = 0.0
    for group, runs in rows.items():
        secs = [s for s, _ in runs]
        total += sum(secs)
        peaks = [r for _, r in runs if r is not None]
        span = f"{statistics.median(secs):.1f}" + (f" ({min(secs):.1f}–{max(secs):.1f})" if len(secs) > 1 else "")
        print(f"| {group} | {len(runs)} | {span} | {max(peaks) if peaks else '?'} |")
    print(f"\nSum of step wall times: {total / 60:.1f} min")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
