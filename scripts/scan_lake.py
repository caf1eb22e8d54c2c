#!/usr/bin/env python3
"""Searches every file under a directory for strings: Parquet files decoded (every value of every
column, so compression cannot hide a match), any other file (Delta log JSON, checkpoints' sidecars)
as raw bytes. Prints `path: needle` per match; exit 1 if anything matched, 0 if nothing did.

Usage: scan_lake.py DIR NEEDLE [NEEDLE ...]
"""
import os
import sys

import pyarrow.parquet as pq


def values(path):
    table = pq.read_table(path)
    for column in table.columns:
        for v in column.to_pylist():
            if v is not None:
                yield str(v)


def main():
    root, needles = sys.argv[1], sys.argv[2:]
    found = 0
    scanned = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            scanned += 1
            if name.endswith(".parquet"):
                text = "\n".join(values(path))
            else:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            for n in needles:
                if n in text:
                    print(f"{path}: {n}")
                    found += 1
    print(f"scanned {scanned} files", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
