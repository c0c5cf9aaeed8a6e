"""Parses OpenMetrics text expositions with the official Prometheus Python client.

Usage: parse_metrics.py FILE... Prints one JSON list with, per file, an object mapping each
sample, written `name{label="value",...}` (labels sorted by name), to its value. The parser
rejects a malformed exposition (it raises), so a passing run also checks the format.
"""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def main():
    parsed = []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            parsed.append(samples(f.read()))
    print(json.dumps(parsed))


if __name__ == "__main__":
    main()
