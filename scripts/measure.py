#!/usr/bin/env python3
"""Runs a command and prints one JSON object: wall seconds, CPU seconds and peak RSS of the child,
and its peak anonymous memory.

Peak RSS (from the kernel) also counts the pages of the program's own code mapped from the page
cache: about 100 MB for clicklake's 123 MB of machine code, 50 MB for DuckDB's. Peak anonymous
memory leaves them out: it is sampled from /proc/PID/smaps_rollup every 100 ms (a peak shorter
than that can be missed; each sample costs the kernel a walk of the child's page tables).

Usage: scripts/measure.py LABEL -- CMD [ARGS...]   (the command's stdout is passed through to stderr)
"""
import json
import resource
import subprocess
import sys
import threading
import time

label = sys.argv[1]
cmd = sys.argv[sys.argv.index("--") + 1:]
start = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
anon_kb = [0]
done = threading.Event()


def sample():
    path = f"/proc/{proc.pid}/smaps_rollup"
    while not done.is_set():
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith("Anonymous:"):
                        anon_kb[0] = max(anon_kb[0], int(line.split()[1]))
                        break
        except (OSError, ValueError):
            pass
        done.wait(0.1)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
stdout, _ = proc.communicate()
done.set()
sampler.join()
wall = time.monotonic() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(stdout.decode(errors="replace"))
out = {
    "label": label,
    "exit": proc.returncode,
    "wall_s": round(wall, 3),
    "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
    "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
    "peak_anon_mb": round(anon_kb[0] / 1024, 1) if anon_kb[0] else None,
}
try:
    out["summary"] = json.loads(stdout.decode().strip().splitlines()[-1])
except Exception:
    pass
print(json.dumps(out))
sys.exit(proc.returncode)
