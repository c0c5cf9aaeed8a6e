"""Checks constrained generations with validators independent of llguidance.

Reads a JSON list of cases from the file named on the command line; each case is
{"kind": "json_schema" | "json_object" | "regex" | "lark", "grammar": ..., "output": str,
"complete": bool}. For each case prints one JSON line {"ok": bool, "error": str}:
- json_schema: the output parses as JSON and validates against the schema (jsonschema's
  Draft 2020-12 validator with its format checker);
- json_object: the output parses as a JSON object;
- regex: Python's re.fullmatch accepts the output;
- lark: Python lark (LALR) parses the output; an incomplete output (cut by the token limit)
  must be a valid prefix: every token it lexes is accepted by the parser.
"""

import json
import re
import sys

import jsonschema
import lark


def check_json_schema(case):
    value = json.loads(case["output"])
    validator = jsonschema.Draft202012Validator(
        case["grammar"], format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(value), key=str)
    if errors:
        raise ValueError("; ".join(e.message for e in errors))


def check_json_object(case):
    value = json.loads(case["output"])
    if not isinstance(value, dict):
        raise ValueError(f"not an object: {type(value).__name__}")


def check_regex(case):
    if re.fullmatch(case["grammar"], case["output"]) is None:
        raise ValueError(f"{case['output']!r} does not fully match {case['grammar']!r}")


def check_lark(case):
    parser = lark.Lark(case["grammar"], parser="lalr")
    if case["complete"]:
        parser.parse(case["output"])
    else:
        parser.parse_interactive(case["output"]).exhaust_lexer()


CHECKS = {
    "json_schema": check_json_schema,
    "json_object": check_json_object,
    "regex": check_regex,
    "lark": check_lark,
}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    for case in cases:
        try:
            CHECKS[case["kind"]](case)
            print(json.dumps({"ok": True, "error": ""}))
        except Exception as e:  # every failure is reported, not raised
            print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))


if __name__ == "__main__":
    main()
