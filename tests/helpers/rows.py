"""Chat records as the reader produces them, for tests that do not need a file."""


def chat_row(i: str, q: str, a: str, split: str = "train") -> dict:
    return {
        "id": i,
        "split": split,
        "source": "",
        "facts": [],
        "line": 1,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
    }
