#!/usr/bin/env python3
"""Reads a clicklake table without clicklake: replays the Delta log by hand and reads the Parquet
files of the snapshot with pyarrow. Proof that other engines can read the lake.

    python3 scripts/read_delta.py LAKE_DIR/TABLE [PARTITION_COLUMN]

Prints one JSON object: the snapshot version, the live files, the row count, and with a partition
column the rows per value of it (taken from the log's partitionValues, as readers must).
Local tables only; for S3 point pyarrow.fs.S3FileSystem at the same keys.
"""
import json
import os
import sys

import pyarrow.parquet as pq


def snapshot(table):
    """The snapshot version and the live files: path -> partition values."""
    version, adds = snapshot_adds(table)
    return version, {path: dict(a.get("partitionValues") or {}) for path, a in adds.items()}


def snapshot_adds(table):
    """The snapshot version and the live files: path -> the add action (size, partitionValues...)."""
    log = os.path.join(table, "_delta_log")
    live = {}
    start = 0
    last_cp = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last_cp):
        with open(last_cp) as f:
            cp = json.load(f)
        version = cp["version"]
        parts = cp.get("parts")
        names = (
            [f"{version:020d}.checkpoint.{i:010d}.{parts:010d}.parquet" for i in range(1, parts + 1)]
            if parts
            else [f"{version:020d}.checkpoint.parquet"]
        )
        for name in names:
            for row in pq.read_table(os.path.join(log, name), columns=["add"]).to_pylist():
                add = row["add"]
                if add is not None:
                    add["partitionValues"] = dict(add["partitionValues"] or [])
                    live[add["path"]] = add
        start = version + 1
    versions = sorted(
        int(n[:20]) for n in os.listdir(log) if n.endswith(".json") and n[:20].isdigit()
    )
    current = start - 1
    for v in versions:
        if v < start:
            continue
        with open(os.path.join(log, f"{v:020d}.json")) as f:
            for line in f:
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    live[action["add"]["path"]] = action["add"]
                elif "remove" in action:
                    live.pop(action["remove"]["path"], None)
        current = v
    return current, live


def main():
    table = sys.argv[1]
    partition = sys.argv[2] if len(sys.argv) > 2 else None
    version, live = snapshot(table)
    from urllib.parse import unquote

    rows = 0
    by_partition = {}
    for path, values in sorted(live.items()):
        n = pq.ParquetFile(os.path.join(table, unquote(path))).metadata.num_rows
        # Read the data too, not just the footer: the file must decode.
        assert pq.read_table(os.path.join(table, unquote(path))).num_rows == n
        rows += n
        if partition:
            key = values.get(partition)
            by_partition[key] = by_partition.get(key, 0) + n
    print(
        json.dumps(
            {"version": version, "files": len(live), "rows": rows, "by_partition": by_partition},
            sort_keys=True,
        )
    )


if __name__ == "__main__":
    main()
