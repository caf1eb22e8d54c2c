#!/usr/bin/env python3
"""Runs a command and prints one JSON object: wall seconds, CPU seconds and peak RSS of the child.

Usage: scripts/measure.py LABEL -- CMD [ARGS...]   (the command's stdout is passed through to stderr)
"""
import json
import resource
import subprocess
import sys
import time

label = sys.argv[1]
cmd = sys.argv[sys.argv.index("--") + 1:]
start = time.monotonic()
proc = subprocess.run(cmd, stdout=subprocess.PIPE)
wall = time.monotonic() - start
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(proc.stdout.decode(errors="replace"))
out = {
    "label": label,
    "exit": proc.returncode,
    "wall_s": round(wall, 3),
    "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
    "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
}
try:
    out["summary"] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
except Exception:
    pass
print(json.dumps(out))
sys.exit(proc.returncode)
