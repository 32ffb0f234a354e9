"""Imported once, as a top-level module, by a pooled process while it waits for its
assignment (agentlibos.sdk.runtime.rehearse), then forgotten: a stand-in for an agent's
entry module. Its body runs the kinds of statement an entry module does."""

from __future__ import annotations

import json

LIMIT = 3


class Note:
    def __init__(self, text: str) -> None:
        self.text = text


def main(ctx: object, args: dict[str, object]) -> dict[str, object]:
    return {"note": Note(json.dumps(args)).text[:LIMIT]}
