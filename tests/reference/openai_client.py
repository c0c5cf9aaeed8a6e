"""Drives `mlx-engine serve` with the official openai client and checks what it gets back.

Usage: openai_client.py BASE_URL API_KEY MODEL. Runs chat and completions, streamed and not,
at temperature 0, and asserts: streamed text equals unstreamed text, finish reasons are
"stop" or "length", usage adds up (the stream's usage chunk equals the unstreamed usage), and
a refused field (n=2) raises BadRequestError naming it. Prints a closing line on success.
"""

import sys

import openai


def chat_once(client, model, stream):
    args = dict(
        model=model,
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": [{"type": "text", "text": "What is a CPU?"}]},
        ],
        max_tokens=20,
        temperature=0,
    )
    if not stream:
        reply = client.chat.completions.create(**args)
        choice = reply.choices[0]
        assert reply.object == "chat.completion", reply
        assert choice.message.role == "assistant", choice
        return choice.message.content, choice.finish_reason, reply.usage
    chunks = list(
        client.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
    return text, finishes[0], chunks[-1].usage


def completion_once(client, model, stream):
    args = dict(model=model, prompt="def add(a, b):", max_tokens=16, temperature=0)
    if not stream:
        reply = client.completions.create(**args)
        return reply.choices[0].text, reply.choices[0].finish_reason, reply.usage
    chunks = list(client.completions.create(**args, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes
    return text, finishes[0], None


def check_usage(usage, max_tokens):
    assert usage.prompt_tokens > 0, usage
    assert 0 < usage.completion_tokens <= max_tokens, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage


def main():
    base_url, api_key, model = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]
    assert models == [model], models

    text, finish, usage = chat_once(client, model, stream=False)
    streamed, streamed_finish, streamed_usage = chat_once(client, model, stream=True)
    assert text, "empty chat reply"
    assert finish in ("stop", "length"), finish
    assert streamed == text, (streamed, text)
    assert streamed_finish == finish, (streamed_finish, finish)
    check_usage(usage, 20)
    assert streamed_usage.prompt_tokens == usage.prompt_tokens, (streamed_usage, usage)
    assert streamed_usage.completion_tokens == usage.completion_tokens, (streamed_usage, usage)

    text, finish, usage = completion_once(client, model, stream=False)
    streamed, streamed_finish, _ = completion_once(client, model, stream=True)
    assert text and streamed == text, (streamed, text)
    assert streamed_finish == finish, (streamed_finish, finish)
    check_usage(usage, 16)

    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], n=2
        )
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        assert "n" == e.body.get("param") if isinstance(e.body, dict) else "n" in str(e), e

    bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError:
        pass

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
