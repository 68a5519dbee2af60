"""Nexmark: events/s of each example query (examples/nexmark/) over the built-in generator, each in a
fresh `pondstream run` process (start-up included), with peak RSS, beside Flink's published per-core
figure. This machine has 2 cores and pondstream runs one process, so events/s here is close to per core.

    python bench/bench_nexmark.py                    # 10M events
    python bench/bench_nexmark.py --events 2000000 --queries q0 q1
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import wall  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples" / "nexmark"
FLINK_PER_CORE = {"q0": 155_000, "q1": 158_000, "q2": 175_000, "q3": 152_000, "q5": 22_100, "q7": 12_300,
                  "q8": 146_000, "q11": 39_700, "q14": None, "q17": 117_000, "q18": 53_700, "q19": 44_000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--queries", nargs="*", default=sorted(p.stem for p in EXAMPLES.glob("q*.sql")))
    args = ap.parse_args()
    ddl = (EXAMPLES / "ddl.sql").read_text().replace("'10000000'", f"'{args.events}'")
    print(f"{args.events:,} events from the generator; Flink figures: events/s per core, published\n")
    print(f"{'query':6} {'seconds':>8} {'events/s':>12} {'peak RSS MB':>12} {'Flink/core':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for q in sorted(args.queries, key=lambda s: (int(re.match(r"q(\d+)", s)[1]), s)):
            sql = Path(tmp) / f"{q}.sql"
            sql.write_text(ddl + (EXAMPLES / f"{q}.sql").read_text())
            seconds, rss = wall([sys.executable, "-m", "pondstream.engine.cli", "run", str(sql), "--quiet",
                                 "--state-dir", str(Path(tmp) / q)], 1)
            rate = args.events / seconds
            flink = FLINK_PER_CORE.get(q)
            print(f"{q:6} {seconds:8.2f} {rate:12,.0f} {rss:12.0f} {flink or '-':>11} "
                  f"{'' if flink is None else f'{rate / flink:6.1f}'}")


if __name__ == "__main__":
    main()
