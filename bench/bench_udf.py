"""Python functions: a view calling a numpy-bodied UDF against the same view with the equivalent built-in
expression, each a whole `pondstream run` process over the generator (start-up included), and the ratio.
Target (issue 12): within 1.5x.

    python bench/bench_udf.py                  # 2M events, median of 3 runs each
    python bench/bench_udf.py --events 500000 --repeat 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_run import wall  # noqa: E402

FUNCTIONS = Path(__file__).parent.parent / "examples" / "udf" / "functions.py"
STREAM = """CREATE STREAM orders (order_id BIGINT, customer_id VARCHAR, amount DOUBLE, event_time TIMESTAMP,
    WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND)
  WITH (connector = 'generator', rows = '{events}', keys = '1000');
"""
VIEW = """CREATE MATERIALIZED VIEW net AS
SELECT TUMBLE_START(event_time, INTERVAL '1' HOUR) AS hour, customer_id, SUM({expr}) AS net
FROM orders GROUP BY TUMBLE(event_time, INTERVAL '1' HOUR), customer_id;
"""
BUILTIN = "CASE WHEN customer_id LIKE '%7' THEN amount * 0.9 ELSE amount END"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    udf = (f"CREATE FUNCTION discount(amount DOUBLE, customer VARCHAR) RETURNS DOUBLE LANGUAGE PYTHON "
           f"AS '{FUNCTIONS}:discount';\n")
    cases = {"built-in expression": STREAM + VIEW.format(expr=BUILTIN),
             "Python UDF (numpy)": udf + STREAM + VIEW.format(expr="discount(amount, customer_id)")}
    print(f"{args.events:,} events from the generator, SUM(discount(amount, customer_id)) per key and hour\n")
    print(f"{'view':24} {'seconds':>8} {'events/s':>12} {'peak RSS MB':>12}")
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, sql) in enumerate(cases.items()):
            path = Path(tmp) / f"{i}.sql"
            path.write_text(sql.format(events=args.events))
            t, rss = wall([sys.executable, "-m", "pondstream.engine.cli", "run", str(path), "--quiet",
                           "--state-dir", str(Path(tmp) / f"s{i}"), "--reset", "net"], args.repeat)
            seconds[name] = t
            print(f"{name:24} {t:8.2f} {args.events / t:12,.0f} {rss:12.0f}")
    ratio = seconds["Python UDF (numpy)"] / seconds["built-in expression"]
    print(f"\nUDF / built-in: {ratio:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
