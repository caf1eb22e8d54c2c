#!/usr/bin/env python3
"""File layout of a local lake (or an s3s-fs bucket directory), from each table's Delta log:
partitions, live files per partition and file sizes. For the benchmark's "files written per
partition" figures.

    python3 scripts/lake_files.py LAKE_DIR [TABLE...]

Prints one JSON object per table on one line each: table, partitions, files, bytes, files per
partition (min / median / max) and file size in MB (min / median / max).
"""
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from read_delta import snapshot_adds  # noqa: E402


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
    tables = sys.argv[2:] or sorted(
        n for n in os.listdir(lake) if os.path.isdir(os.path.join(lake, n, "_delta_log"))
    )
    for t in tables:
        print(json.dumps(layout(os.path.join(lake, t))))


if __name__ == "__main__":
    main()
