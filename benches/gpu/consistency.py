"""16 concurrent streamed requests through a running server against the same
prompts run one at a time (greedy, 32 tokens). Prints one JSON object: how many
of the concurrent outputs equal their sequential twin, and the first mismatch.
"""

import argparse
import json
import threading

import httpx

PROMPTS = [f"Request {i}: write one sentence about the number {i * 7}." for i in range(16)]


def complete(url, model, prompt):
    body = {"model": model, "prompt": prompt, "max_tokens": 32, "temperature": 0, "stream": True}
    text = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                text.append(chunk["choices"][0]["text"])
    return "".join(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    args = ap.parse_args()
    alone = [complete(args.url, args.model, p) for p in PROMPTS]
    together = [None] * len(PROMPTS)

    def run(i):
        together[i] = complete(args.url, args.model, PROMPTS[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    equal = [a == b for a, b in zip(alone, together)]
    first = next((i for i, e in enumerate(equal) if not e), None)
    print(json.dumps({"requests": len(PROMPTS), "equal": sum(equal),
                      "first_mismatch": None if first is None else
                      {"prompt": PROMPTS[first], "alone": alone[first], "together": together[first]}}))


if __name__ == "__main__":
    main()
