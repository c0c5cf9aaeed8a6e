"""Drives `mlx-engine serve` with the official openai client and checks what it gets back.

Usage: openai_client.py BASE_URL API_KEY MODEL. Runs chat and completions, streamed and not,
at temperature 0, and asserts: streamed text equals unstreamed text, finish reasons are
"stop" or "length", usage adds up (the stream's usage chunk equals the unstreamed usage), and
a refused field (n=2) raises BadRequestError naming it. Logprobs, in both of OpenAI's shapes:
the tokens' bytes (chat) or strings (completions) make up the returned text, text offsets
count the characters before each token, each greedy token's logprob is the largest of its top
logprobs, one entry per generated token (less the end token), streamed entries equal
unstreamed ones, a stop string leaves entries covering the text up to it. logit_bias: +100 on " France" (id 9625) forces it, -100 on the greedy first
token changes it (tokens named by id with vLLM's return_tokens_as_token_ids), and the
reported logprobs stay the model's own. Prints a closing line on
success.
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


# The logprobs of one token computed twice (streamed and not) through the same kernel path may
# differ by float rounding only. A request whose prompt is wholly in the prefix cache computes
# its last prompt position in a one-row pass, a fresh one inside the prompt's multi-row pass, and
# those paths differ by more (a few hundredths here; tests/kv_consistency.rs bounds the logits),
# so the requests compared below are both made from a warm cache.
LOGPROB_TOL = 1e-5
FRANCE = 9625  # " France" in the Qwen2 vocabulary


def entries_expected(finish, usage):
    """Entries one generation reports: every token but an end-of-generation token."""
    return usage.completion_tokens - (1 if finish == "stop" else 0)


def check_chat_logprobs(client, model):
    args = dict(
        model=model,
        messages=[{"role": "user", "content": "Name three prime numbers."}],
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    client.chat.completions.create(**args)  # warms the prefix cache with this prompt
    reply = client.chat.completions.create(**args)
    choice = reply.choices[0]
    content = choice.logprobs.content
    text = choice.message.content
    assert bytes(b for t in content for b in t.bytes) == text.encode(), (content, text)
    assert len(content) == entries_expected(choice.finish_reason, reply.usage), (content, reply.usage)
    for t in content:
        assert len(t.top_logprobs) == 5, t
        assert t.logprob == max(a.logprob for a in t.top_logprobs), t
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].bytes == t.bytes, t
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True) and lps[0] <= 0.0, t

    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content], (streamed, content)
    for a, b in zip(streamed, content):
        assert abs(a.logprob - b.logprob) <= LOGPROB_TOL, (a, b)
    # Without logprobs asked for, none come back.
    plain = client.chat.completions.create(**{**args, "logprobs": None, "top_logprobs": None})
    assert plain.choices[0].logprobs is None, plain


def check_completion_logprobs(client, model):
    args = dict(model=model, prompt="def add(a, b):", max_tokens=12, temperature=0, logprobs=3)
    reply = client.completions.create(**args)
    choice = reply.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text, (lp.tokens, choice.text)
    assert len(lp.tokens) == entries_expected(choice.finish_reason, reply.usage), (lp, reply.usage)
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)
    for i, token in enumerate(lp.tokens):
        assert lp.text_offset[i] == len("".join(lp.tokens[:i])), (i, lp.text_offset)
        top = lp.top_logprobs[i]
        assert len(top) == 3 and top[token] == lp.token_logprobs[i], (token, top)
        assert lp.token_logprobs[i] == max(top.values()), (token, top)

    chunks = list(client.completions.create(**args, stream=True))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert tokens == lp.tokens and offsets == lp.text_offset, (tokens, offsets, lp)

    # A stop string cuts the text: the entries cover it, only the last may reach past the cut.
    text = choice.text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), (text, stop)
    cut = client.completions.create(**args, stop=[stop]).choices[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop", (cut, stop)
    tokens = cut.logprobs.tokens
    joined = "".join(tokens)
    assert joined.startswith(cut.text), (joined, cut.text)
    if joined != cut.text:
        assert len(joined) - len(tokens[-1]) < len(cut.text), (tokens, cut.text)


def check_logit_bias(client, model):
    base = dict(model=model, prompt="def add(a, b):", temperature=0)
    forced = client.completions.create(**base, max_tokens=3, logprobs=1, logit_bias={str(FRANCE): 100})
    choice = forced.choices[0]
    assert choice.text == " France" * 3, choice.text
    # The logprobs are the model's distribution, in which " France" is not the favourite first
    # token after "def add(a, b):" (under the biased one it would have probability ~1).
    lp = choice.logprobs
    assert lp.tokens == [" France"] * 3, lp
    assert lp.token_logprobs[0] < max(lp.top_logprobs[0].values()), lp

    def first_ids(**extra):
        reply = client.completions.create(
            **base, max_tokens=2, logprobs=0, extra_body={"return_tokens_as_token_ids": True}, **extra
        )
        return reply.choices[0].logprobs.tokens

    assert first_ids(logit_bias={str(FRANCE): 100}) == [f"token_id:{FRANCE}"] * 2
    greedy = first_ids()
    assert all(t.startswith("token_id:") for t in greedy), greedy
    banned = first_ids(logit_bias={greedy[0].split(":")[1]: -100})
    assert banned[0] != greedy[0], (banned, greedy)

    for bad in ({"999999999": 1}, {str(FRANCE): 101}, {"x": 1}):
        try:
            client.completions.create(**base, max_tokens=1, logit_bias=bad)
            raise AssertionError(f"logit_bias {bad} was accepted")
        except openai.BadRequestError as e:
            assert e.body.get("param") == "logit_bias", e.body


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

    check_chat_logprobs(client, model)
    check_completion_logprobs(client, model)
    check_logit_bias(client, model)

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
