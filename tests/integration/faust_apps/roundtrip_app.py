"""A tiny Faust app for the infrastructure round-trip test (run as a subprocess).

usage: roundtrip_app.py BOOTSTRAP TOPIC APP_ID EXPECTED RESULT_FILE
Sums integer values per key into a Table; once EXPECTED messages were counted, writes the Table's
contents as JSON to RESULT_FILE (a file, because Faust redirects stdout into its logger) and keeps
running until the parent stops it.
"""

from __future__ import annotations

import json
import os
import sys

import faust


def build(bootstrap: str, topic_name: str, app_id: str, expected: int, result_file: str) -> faust.Worker:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic_name, key_type=str, value_type=str, key_serializer="raw", value_serializer="raw")
    totals = app.Table("totals", default=int, partitions=1)
    seen = 0

    @app.agent(source)
    async def add(stream: faust.StreamT) -> None:
        nonlocal seen
        async for key, value in stream.items():
            totals[key] += int(value)
            seen += 1
            if seen == expected:
                tmp = result_file + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump(dict(totals.items()), fh)
                os.replace(tmp, result_file)  # atomic: the parent never reads half a file

    return faust.Worker(app, loglevel="WARNING", quiet=True)


if __name__ == "__main__":
    bootstrap, topic_name, app_id, expected, result_file = sys.argv[1:6]
    build(bootstrap, topic_name, app_id, int(expected), result_file).execute_from_commandline()
