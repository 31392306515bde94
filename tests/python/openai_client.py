"""Drives an inflight server with the official `openai` client, the way users do.

Each check raises AssertionError with a message on failure; the script exits 0 only
when all pass. OPENAI_BASE_URL and OPENAI_API_KEY come from the Rust test.
"""
import openai
from openai import OpenAI

MODEL = "test-model"
client = OpenAI(max_retries=0, timeout=120)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def chat_non_streaming():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0)
    check(r.object == "chat.completion", r.object)
    c = r.choices[0]
    check(c.message.role == "assistant" and len(c.message.content) > 0, c)
    check(c.finish_reason in ("stop", "length"), c.finish_reason)
    u = r.usage
    check(u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12, u)
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, u)
    check(u.prompt_tokens_details.cached_tokens >= 0, u)
    return c.message.content


def chat_streaming_matches_non_streaming(expected):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", chunk.object)
        if chunk.usage is not None:
            usage = chunk.usage
            check(chunk.choices == [], "usage chunk has no choices")
            continue
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        text += d.content or ""
        finish = chunk.choices[0].finish_reason or finish
    check(roles == ["assistant"], roles)
    check(text == expected, f"streamed {text!r} != non-streamed {expected!r}")
    check(finish in ("stop", "length"), finish)
    check(usage is not None and usage.completion_tokens > 0, usage)


def n_choices():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a word."}],
        max_tokens=8, temperature=1.0, n=2, seed=7)
    check([c.index for c in r.choices] == [0, 1], r.choices)
    check(all(c.message.content for c in r.choices), r.choices)
    check(2 <= r.usage.completion_tokens <= 16, r.usage)


def completions_prompt_array():
    r = client.completions.create(
        model=MODEL, prompt=["The capital of France is", "One, two, three,"], max_tokens=5, temperature=0)
    check(r.object == "text_completion", r.object)
    check(len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1], r.choices)
    check(all(len(c.text) > 0 for c in r.choices), r.choices)
    check(r.usage.completion_tokens == 10, r.usage)
    # Each prompt alone gives the same text as inside the array.
    for i, p in enumerate(["The capital of France is", "One, two, three,"]):
        alone = client.completions.create(model=MODEL, prompt=p, max_tokens=5, temperature=0)
        check(alone.choices[0].text == r.choices[i].text, (alone.choices[0].text, r.choices[i].text))
    # Token-id prompts work too.
    r2 = client.completions.create(model=MODEL, prompt=[504, 3575, 282, 4649, 314], max_tokens=3, temperature=0)
    check(r2.usage.prompt_tokens == 5, r2.usage)


def stop_strings():
    base = client.completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12, temperature=0)
    text = base.choices[0].text
    check(len(text) > 4, text)
    # Stop on a piece of the greedy continuation that spans a token boundary.
    stop = text[2:5]
    r = client.completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12, temperature=0, stop=[stop])
    check(r.choices[0].finish_reason == "stop", r.choices[0])
    check(r.choices[0].text == text[: text.find(stop)], (r.choices[0].text, text, stop))
    # Streaming applies the same stop without leaking any of it.
    s = client.completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12, temperature=0,
                                  stop=stop, stream=True)
    streamed = "".join(c.choices[0].text for c in s if c.choices)
    check(streamed == r.choices[0].text, (streamed, r.choices[0].text))


def seed_reproducible():
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.95, seed=1234)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    check(a == b, (a, b))
    others = {client.completions.create(**{**kw, "seed": s}).choices[0].text for s in (1, 2, 3)}
    check(len(others | {a}) > 1, "different seeds all gave the same text")


def logprobs():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens, (len(content), r.usage))
    for t in content:
        check(t.logprob <= 0 and len(t.top_logprobs) == 3, t)
        # Greedy: the chosen token is the most likely one.
        check(abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4, t)
    c = client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    check(len(lp.tokens) == 3 and len(lp.token_logprobs) == 3 and all(len(x) <= 2 for x in lp.top_logprobs), lp)


def logit_bias():
    token = 1000
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=3, temperature=0,
              logprobs=True)
    plain = [t.token for t in client.chat.completions.create(**kw).choices[0].logprobs.content]
    # +100 makes it the greedy choice at every step.
    forced = [t.token for t in client.chat.completions.create(
        **kw, logit_bias={str(token): 100}).choices[0].logprobs.content]
    check(len(forced) == 3 and len(set(forced)) == 1 and forced != plain, (forced, plain))
    # It is token 1000: echoed as a one-token prompt, that is its text.
    echoed = client.completions.create(model=MODEL, prompt=[token], max_tokens=1, temperature=0, echo=True)
    check(echoed.choices[0].text.startswith(forced[0]), (echoed.choices[0].text, forced))
    for bad, param in (({"abc": 1}, "logit_bias"), ({str(token): 150}, "logit_bias")):
        try:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, logit_bias=bad)
            raise AssertionError(f"logit_bias {bad} accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.param == param, e)


def streamed_echo_matches_non_streamed():
    kw = dict(model=MODEL, prompt=["Hello", "The sky is"], max_tokens=4, temperature=0, echo=True, n=2)
    whole = client.completions.create(**kw)
    texts = {}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    check(texts == {c.index: c.text for c in whole.choices}, (texts, whole.choices))
    check(texts[2].startswith("The sky is") and texts[0].startswith("Hello"), texts)


def min_tokens():
    # vLLM's extension, sent as the client sends any: in `extra_body`.
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    short = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=64, temperature=0)
    check(short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 30, short)
    longer = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=64, temperature=0, extra_body={"min_tokens": 30})
    check(longer.usage.completion_tokens >= 30, longer)
    check(longer.choices[0].message.content.startswith(short.choices[0].message.content), (short, longer))
    # A stop string in the first min_tokens tokens' text does not end the output.
    kw = dict(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0, stop=[","])
    cut = client.completions.create(**kw)
    kept = client.completions.create(**kw, extra_body={"min_tokens": 4})
    check("," not in cut.choices[0].text and "," in kept.choices[0].text, (cut, kept))
    check(kept.choices[0].finish_reason == "stop" and kept.usage.completion_tokens > 4, kept)


def stop_token_ids():
    # Token 1000 forced by its bias, and made a stop token: the output ends at once,
    # without its text; after `min_tokens` it may end it only from then on.
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0,
              logit_bias={"1000": 100})
    r = client.chat.completions.create(**kw, extra_body={"stop_token_ids": [1000]})
    c = r.choices[0]
    check(c.finish_reason == "stop" and c.message.content == "" and r.usage.completion_tokens == 1, r)
    r = client.chat.completions.create(**kw, extra_body={"stop_token_ids": [1000], "min_tokens": 2})
    c = r.choices[0]
    check(c.finish_reason == "stop" and r.usage.completion_tokens == 3 and c.message.content, r)
    check("()" not in c.message.content, r)


def unsupported_features_are_refused_not_ignored():
    msgs = [{"role": "user", "content": "Give me JSON"}]
    cases = [
        ("response_format", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=4, response_format={"type": "json_object"})),
        ("tool_choice", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=4, tool_choice="required",
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])),
        ("suffix", lambda: client.completions.create(model=MODEL, prompt="a", suffix="b", max_tokens=2)),
        ("best_of", lambda: client.completions.create(model=MODEL, prompt="a", best_of=3, max_tokens=2)),
        ("guided_json", lambda: client.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=4, extra_body={"guided_json": {"type": "object"}})),
    ]
    for param, call in cases:
        try:
            call()
            raise AssertionError(f"{param} accepted")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.param == param, (param, e))
    # What is served stays accepted: a text format, tools the model may ignore.
    r = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=2, response_format={"type": "text"}, tool_choice="auto",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    check(r.choices[0].message.content is not None, r)


def models_and_errors():
    models = client.models.list()
    check([m.id for m in models.data] == [MODEL], models)
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        check(e.status_code == 404, e)
    try:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10**7)
        raise AssertionError("context overflow accepted")
    except openai.BadRequestError as e:
        check("context length" in str(e), e)


expected = chat_non_streaming()
chat_streaming_matches_non_streaming(expected)
n_choices()
completions_prompt_array()
stop_strings()
seed_reproducible()
logprobs()
logit_bias()
streamed_echo_matches_non_streamed()
min_tokens()
stop_token_ids()
unsupported_features_are_refused_not_ignored()
models_and_errors()
print("all openai client checks passed")
