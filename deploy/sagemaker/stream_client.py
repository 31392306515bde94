#!/usr/bin/env python3
"""Streams a chat completion from an inflight SageMaker endpoint, printing tokens as
they arrive.

    python deploy/sagemaker/stream_client.py --endpoint inflight "Write a haiku about rust"

InvokeEndpointWithResponseStream hands back the container's chunked body as
PayloadPart events whose byte boundaries are arbitrary: one part can hold half an
SSE line, several events, or half of a multi-byte UTF-8 character. SseDecoder
buffers bytes until a full event (blank-line terminated) is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterable, Iterator

import boto3

DONE = "[DONE]"


class SseDecoder:
    """Incremental text/event-stream decoder: feed bytes, get each event's data."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        events: list[str] = []
        # Split on bytes, not text: a UTF-8 character cut between two parts is
        # only decoded once its line is complete.
        while True:
            cut = self._next_line_end()
            if cut is None:
                return events
            end, width = cut
            line = self._buf[:end].decode("utf-8")
            self._buf = self._buf[end + width:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _next_line_end(self) -> tuple[int, int] | None:
        # The SSE spec allows CRLF, LF or CR line ends. A CR at the very end of the
        # buffer may be the first half of a CRLF, so wait for the next byte.
        for i, b in enumerate(self._buf):
            if b == 0x0A:
                return i, 1
            if b == 0x0D:
                if i + 1 == len(self._buf):
                    return None
                return i, 2 if self._buf[i + 1] == 0x0A else 1
        return None

    def _line(self, line: str) -> str | None:
        if line == "":
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None  # comment (keep-alive)
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


def sse_data(chunks: Iterable[bytes]) -> Iterator[str]:
    decoder = SseDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)


def token_text(event: dict[str, Any]) -> str:
    """The text in one chunk of a chat (`delta.content`) or completions (`text`) stream."""
    if "error" in event:
        raise RuntimeError(f"server error mid-stream: {event['error']}")
    out = []
    for choice in event.get("choices", []):
        delta = choice.get("delta")
        out.append((delta or {}).get("content") or choice.get("text") or "")
    return "".join(out)


def tokens(chunks: Iterable[bytes]) -> Iterator[str]:
    for data in sse_data(chunks):
        if data == DONE:
            return
        yield token_text(json.loads(data))


def payload_parts(response: dict[str, Any]) -> Iterator[bytes]:
    for event in response["Body"]:
        if "PayloadPart" in event:
            yield event["PayloadPart"]["Bytes"]
        else:
            # botocore raises EventStreamError for ModelStreamError and
            # InternalStreamFailure; anything else here is a shape this client
            # does not know.
            raise RuntimeError(f"stream failed: {event}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt")
    p.add_argument("--endpoint", default="inflight")
    p.add_argument("--region")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    args = p.parse_args(argv)

    runtime = boto3.session.Session(region_name=args.region).client("sagemaker-runtime")
    body = {
        "messages": [{"role": "user", "content": args.prompt}],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": True,
    }
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=args.endpoint,
        ContentType="application/json",
        Accept="text/event-stream",
        Body=json.dumps(body),
    )
    for text in tokens(payload_parts(response)):
        sys.stdout.write(text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
