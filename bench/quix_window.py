"""The Kafka benchmark's window in Quix Streams, for comparison (runs in its own venv: Quix pins an
older confluent-kafka). Prints JSON: events, seconds from the first message to the Nth, events/s.

    bench/.venv-quix/bin/python bench/quix_window.py BOOTSTRAP TOPIC N
"""

import json
import sys
import tempfile
import time

import quixstreams.dataframe.windows.aggregations as agg
from quixstreams import Application


def main() -> None:
    bootstrap, topic_name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = {"count": 0, "first": None, "last": None}
    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(broker_address=bootstrap, consumer_group=f"quix-bench-{time.time_ns()}",
                          auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING")
        topic = app.topic(topic_name, value_deserializer="json",
                          timestamp_extractor=lambda value, headers, ts, ts_type: value["event_time"])
        sdf = app.dataframe(topic)

        def count(value):
            seen["count"] += 1
            if seen["first"] is None:
                seen["first"] = time.perf_counter()
            if seen["count"] == n:
                seen["last"] = time.perf_counter()
                app.stop()
            return value

        sdf = sdf.update(count)
        sdf = sdf.tumbling_window(duration_ms=60_000, grace_ms=5_000).agg(n=agg.Count(), total=agg.Sum("amount"))
        sdf = sdf.final()
        app.run()
    secs = (seen["last"] or time.perf_counter()) - seen["first"]
    print(json.dumps({"events": seen["count"], "seconds": secs, "events_per_s": seen["count"] / secs}))


if __name__ == "__main__":
    main()
