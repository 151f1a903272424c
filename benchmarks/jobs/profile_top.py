"""The functions a py-spy raw profile (``run.py --profile DIR``) spends its samples in.

    .venv/bin/python benchmarks/jobs/profile_top.py DIR/embedded1-gateway.txt [--top 25] [--match tokenway]

Prints, per function, the share of samples where it is on the stack (inclusive) and where it is the
innermost frame (self), highest inclusive first; ``--match`` keeps only frames whose text contains it.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    print(f"{total} samples")
    shown = 0
    for frame, n in inclusive.most_common():
        if args.match in frame:
            print(f"{100 * n / total:5.1f}% {100 * own[frame] / total:5.1f}%  {frame[:150]}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
