#!/usr/bin/env python3
"""File layout of a local lake (or an s3s-fs bucket directory), from each table's Delta log:
partitions, live files per partition and file sizes. For the benchmark's "files written per
partition" figures.

    ~/.cache/clicklake-py/bin/python scripts/lake_files.py LAKE_DIR [TABLE...]

Needs pyarrow (for checkpoints), as installed by scripts/test.sh and scripts/bench.sh.

Prints one JSON object per table on one line each: table, partitions, files, bytes, files per
partition (min / median / max) and file size in MB (min / median / max).
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    from read_delta import snapshot_adds  # noqa: E402
except ImportError as e:
    sys.exit(f"lake_files.py: {e}; run it with ~/.cache/clicklake-py/bin/python (see scripts/test.sh)")


def layout(table_dir):
    version, adds = snapshot_adds(table_dir)
    per_partition = {}
    for add in adds.values():
        key = tuple(sorted((add.get("partitionValues") or {}).items()))
        per_partition.setdefault(key, []).append(int(add["size"]))
    counts = [len(v) for v in per_partition.values()] or [0]
    sizes = [s for v in per_partition.values() for s in v] or [0]
    mb = lambda b: round(b / 1e6, 2)
    return {
        "table": os.path.basename(table_dir.rstrip("/")),
        "version": version,
        "partitions": len(per_partition),
        "files": sum(len(v) for v in per_partition.values()),
        "bytes": sum(sizes),
        "files_per_partition": [min(counts), statistics.median(counts), max(counts)],
        "file_mb": [mb(min(sizes)), mb(statistics.median(sizes)), mb(max(sizes))],
    }


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    lake = sys.argv[1]
    if not os.path.isdir(lake):
        sys.exit(f"lake_files.py: {lake}: no such directory")
    for t in sys.argv[2:]:
        if not os.path.isdir(os.path.join(lake, t, "_delta_log")):
            sys.exit(f"lake_files.py: {os.path.join(lake, t)}: not a Delta table (no _delta_log)")
    tables = sys.argv[2:] or sorted(
        n for n in os.listdir(lake) if os.path.isdir(os.path.join(lake, n, "_delta_log"))
    )
    for t in tables:
        print(json.dumps(layout(os.path.join(lake, t))))


if __name__ == "__main__":
    main()
