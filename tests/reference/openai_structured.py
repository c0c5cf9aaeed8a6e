"""Structured output through `mlx-engine serve`, driven by the official openai client.

Usage: openai_structured.py BASE_URL API_KEY MODEL [--tools]. Checks, with Python jsonschema as
the independent validator:
- response_format json_schema: for each schema and seed the content parses and validates, and
  the reply ends by "stop" (the schemas are bounded);
- response_format json_object: the content parses as a JSON object;
- an invalid schema is a 400 (BadRequestError) naming response_format.json_schema.schema;
- with --tools: tool_choice "required" gives message.tool_calls (id, type "function", a listed
  name, arguments a JSON string that validates against the tool's parameters) and
  finish_reason "tool_calls"; a named tool_choice calls that tool; the streamed call
  reassembled from delta.tool_calls equals the unstreamed one; the call and a tool result
  round-trip into a follow-up turn that answers in text.
Prints a closing line on success.
"""

import json
import sys

import jsonschema
import openai

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 50000000},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "population", "capital"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "colors": {
                "type": "array",
                "items": {"enum": ["red", "green", "blue", "yellow"]},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["colors"],
        "additionalProperties": False,
    },
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds two integers",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                    "b": {"type": "integer", "minimum": -1000, "maximum": 1000},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]


def check_json_schema(client, model):
    for i, schema in enumerate(SCHEMAS):
        for seed in (1, 2):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Tell me about a city, as JSON."}],
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": f"schema_{i}", "schema": schema, "strict": True},
                },
                max_tokens=80,
                temperature=0.7,
                seed=seed,
            )
            choice = reply.choices[0]
            value = json.loads(choice.message.content)
            jsonschema.validate(value, schema)
            assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)


def check_json_object(client, model):
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Describe a dog as a JSON object."}],
        response_format={"type": "json_object"},
        max_tokens=80,
        temperature=0,
    )
    content = reply.choices[0].message.content
    value = json.loads(content) if reply.choices[0].finish_reason == "stop" else None
    assert value is None or isinstance(value, dict), content
    assert reply.choices[0].finish_reason in ("stop", "length")
    if value is None:
        assert content.lstrip().startswith("{"), content


def check_bad_schema(client, model):
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "no-such-type"}},
            },
            max_tokens=4,
        )
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert "response_format.json_schema.schema" in str(e), e
    else:
        raise AssertionError("an invalid schema was accepted")


def tool_of(name):
    return next(t for t in TOOLS if t["function"]["name"] == name)


def check_call(call):
    assert call.type == "function", call
    assert call.id, call
    tool = tool_of(call.function.name)
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return call.function.name, args


def check_tools(client, model):
    messages = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    args = dict(model=model, messages=messages, tools=TOOLS, max_tokens=80, temperature=0)
    reply = client.chat.completions.create(**args, tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = [check_call(c) for c in choice.message.tool_calls]
    assert calls, choice

    chunks = list(client.chat.completions.create(**args, tool_choice="required", stream=True))
    parts = {}
    finishes = []
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            part = parts.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            part["id"] += tc.id or ""
            if tc.function is not None:
                part["name"] += tc.function.name or ""
                part["arguments"] += tc.function.arguments or ""
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert finishes == ["tool_calls"], finishes
    streamed = [(parts[i]["name"], json.loads(parts[i]["arguments"])) for i in sorted(parts)]
    assert streamed == calls, (streamed, calls)

    named = client.chat.completions.create(
        **args, tool_choice={"type": "function", "function": {"name": "add"}}
    )
    name, _ = check_call(named.choices[0].message.tool_calls[0])
    assert name == "add", name

    call = choice.message.tool_calls[0]
    follow = messages + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    answer = client.chat.completions.create(
        model=model, messages=follow, tools=TOOLS, tool_choice="none", max_tokens=40, temperature=0
    )
    assert answer.choices[0].message.tool_calls in (None, []), answer
    assert answer.choices[0].message.content, answer


def main():
    base, key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=base, api_key=key, timeout=300, max_retries=0)
    check_json_schema(client, model)
    check_json_object(client, model)
    check_bad_schema(client, model)
    if "--tools" in sys.argv[4:]:
        check_tools(client, model)
    print("openai structured: all checks passed")


if __name__ == "__main__":
    main()
