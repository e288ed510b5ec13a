"""Median images/s and data_wait of `vitok train` metrics.jsonl files, the first window left out.

    python benchmarks/train_rates.py OUT/train_*.jsonl
"""

import json
import statistics
import sys


def main(paths: list[str]) -> None:
    for path in paths:
        rows = [json.loads(line) for line in open(path)][1:]  # the first window holds compilation
        if not rows:
            print(f"{path}: no windows after the first")
            continue
        rate = statistics.median(r["images_per_second"] for r in rows)
        waits = [r["data_wait"] for r in rows if "data_wait" in r]
        wait = f"{statistics.median(waits):.3f}" if waits else "-"
        print(f"{path}: median {rate:.0f} images/s over {len(rows)} windows "
              f"({min(r['images_per_second'] for r in rows):.0f}-{max(r['images_per_second'] for r in rows):.0f}), "
              f"data_wait {wait}")


if __name__ == "__main__":
    main(sys.argv[1:])
