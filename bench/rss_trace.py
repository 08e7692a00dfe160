"""RSS over time through one `taft finetune` at distilcamembert's shape (6x768, random weights).

Samples the process's resident set every 50 ms and prints the peak, the RSS at each of the
step's log events and a coarse curve. It builds its inputs under WORK once (prep of the
learnable synthetic set, init, a one-step role model of each variant), then trains METHOD for
6 steps of batch 4 with 2 threads, no evaluation, no checkpoints; further `--set` overrides
follow. `TAFT` names the binary to run (default target/release/taft), so two builds can be
compared on the same inputs; environment variables such as `MALLOC_CONF` pass through.

    python bench/rss_trace.py WORK [taft|noadapt|tapt] [KEY=VALUE ...]
"""
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAFT = os.environ.get("TAFT", os.path.join(ROOT, "target", "release", "taft"))


def taft(*args):
    subprocess.run([TAFT, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def inputs(work):
    prep, init = os.path.join(work, "prep"), os.path.join(work, "init")
    roles = {v: os.path.join(work, "role-" + v) for v in ("adaptive", "direct")}
    if not all(os.path.exists(p) for p in roles.values()):
        taft("prep", "-o", prep, "--set", "synthetic={seed: 42, learnable: true}")
        taft("init", "-i", prep, "-o", init, "--set",
             "scratch={vocab_size: 8000, hidden_size: 768, num_hidden_layers: 6, num_attention_heads: 12, "
             "intermediate_size: 3072, max_length: 512}")
        for variant, out in roles.items():
            taft("role", "-i", prep, "-i", init, "-o", out, "--set", f"variant={variant}",
                 "--set", "adaptive={heads: 12, ffn: 2048}", "--set", "train.max_steps=1",
                 "--set", "train.batch_size=8", "--set", "train.eval_each_epoch=false",
                 "--set", "train.best=null", "--set", "train.threads=2")
    return prep, roles


def main():
    work, method, extra = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "taft"), sys.argv[3:]
    prep, roles = inputs(work)
    out = os.path.join(work, f"ft-{method}-{time.time_ns()}")
    parent = roles["adaptive" if method == "taft" else "direct"]
    cmd = [TAFT, "--log-format", "json", "finetune", "-i", prep, "-i", parent, "-o", out]
    for s in [f"method={method}", "encoder_cache=false", "train.batch_size=4", "train.max_steps=6",
              "train.epochs=100", "train.best=null", "train.eval_each_epoch=false", "train.checkpoint_every=0",
              "train.device=cpu", "train.threads=2", *extra]:
        cmd += ["--set", s]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events = []

    def read():
        for line in p.stderr:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            fields = {k: v for k, v in e.items() if k not in ("timestamp", "level", "target", "message")}
            events.append((time.time() - t0, e.get("message", ""), fields))

    reader = threading.Thread(target=read)
    reader.start()
    samples = []
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"):
                        samples.append((time.time() - t0, int(line.split()[1]) / 1024))
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    reader.join()
    peak = max(samples, key=lambda s: s[1])
    print(f"exit {p.returncode}; peak sampled RSS {peak[1]:.0f} MiB at {peak[0]:.1f} s")
    j = 0
    for t, message, fields in events:
        while j + 1 < len(samples) and samples[j + 1][0] <= t:
            j += 1
        print(f"{t:7.1f} s  rss {samples[j][1]:6.0f}  {message} {json.dumps(fields)[:150]}")
    step = max(1, len(samples) // 60)
    print(" ".join(f"{t:.0f}:{r:.0f}" for t, r in samples[::step]))
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
