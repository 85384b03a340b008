"""The active data files of a Delta table, read straight from its log with no Delta library:
the latest checkpoint (Parquet, read with DuckDB) if there is one, then every JSON commit after
it, applying `add` and `remove` actions in order. Used by the tests to hand DuckDB exactly the
files a Delta reader would read.

    python3 delta_files.py <table directory>      # prints one absolute path per line
"""
import json
import os
import sys
from urllib.parse import unquote


def active_files(table):
    log = os.path.join(table, "_delta_log")
    files = {}
    start = -1
    last = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last):
        import duckdb

        with open(last) as f:
            cp = json.load(f)
        start = cp["version"]
        parts = [
            os.path.join(log, n)
            for n in os.listdir(log)
            if n.startswith(f"{start:020d}.checkpoint") and n.endswith(".parquet")
        ]
        for (path,) in duckdb.execute(
            "SELECT add.path FROM read_parquet(?) WHERE add IS NOT NULL", [parts]
        ).fetchall():
            files[path] = True
    commits = sorted(
        int(n[:20]) for n in os.listdir(log) if n.endswith(".json") and n[:20].isdigit()
    )
    for v in commits:
        if v <= start:
            continue
        with open(os.path.join(log, f"{v:020d}.json")) as f:
            for line in f:
                action = json.loads(line)
                if "add" in action:
                    files[action["add"]["path"]] = True
                elif "remove" in action:
                    files.pop(action["remove"]["path"], None)
    return sorted(os.path.join(table, unquote(p)) for p in files)


if __name__ == "__main__":
    for p in active_files(sys.argv[1]):
        print(p)
