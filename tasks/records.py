"""A drop's records held as columns, handed out as the dicts `ingest.to_record` makes.

A million records as dicts took 1.2 GB: each row a dict of ten keys, a list and two message
dicts (0.8 KB of containers for 0.4 KB of text). As columns they take 0.55 GB: the text and
a few slots a row; a column with one value in every row (most drops have no source, slice or
schema problem) holds it once. Rows are built when asked for (`records[i]`, iteration); the
gate's bulk work (validation frames, curation) reads the columns. A built row is a copy:
change a record through its columns (`splits`), not the row.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from itertools import islice, repeat
from typing import Any, overload

Row = dict[str, Any]

_CHAT_KEYS = ["role", "content"]


class Records(Sequence[Row]):
    """Rows as columns: built a row at a time (`add_fields`, `add`), then `compact`ed; or
    wrapping dicts already made (`of`), which are then handed out as they are."""

    def __init__(self) -> None:
        self.ids: list[Any] = []
        # A row's message roles as a tuple (None: no conversation), shared between rows: a
        # million ("user", "assistant") tuples would be 64 MB.
        self.roles: list[tuple[str, ...] | None] = []
        # Every row's message contents in one list: row i's are texts[bounds[i]:bounds[i+1]]
        # (a tuple a row would be 80 MB a million).
        self.texts: list[str] = []
        self.bounds: MutableSequence[int] = array("q", [0])
        self.splits: list[Any] = []
        self.sources: list[Any] = []
        self.facts: list[Any] = []  # None for no facts (an empty list is 56 bytes)
        self.slices: list[Any] = []
        self.pairs: list[Any] = []
        self.lines: MutableSequence[Any] = array("q")
        self.schemas: list[str | None] = []
        self.shapes: list[str | None] = []
        self._odd: dict[int, Any] = {}  # messages that are not plain {role, content} dicts
        self._rows: list[Row] | None = None  # the dicts themselves, when wrapped by `of`
        self._role_tuples: dict[tuple[str, ...], tuple[str, ...]] = {}

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Records:
        """`rows` as Records (as they are when they are Records already). Each dict is kept
        and handed out unchanged; only the columns the gate reads are taken from it."""
        if isinstance(rows, Records):
            return rows
        records = cls()
        records.lines = []  # any value, as the dicts hold it
        records._rows = []
        for row in rows:
            records.add(row)
            records._rows.append(row)
        return records.compact()

    def add(self, record: Row) -> None:
        """Append a record shaped like `ingest.to_record`'s (optional keys may be missing)."""
        messages = record.get("messages")
        roles = None if messages is None else tuple([m["role"] for m in messages])
        texts = [] if messages is None else [m["content"] for m in messages]
        facts = record.get("facts", [])
        self.add_fields(
            record.get("id"),
            messages if messages is None or not plain_messages(messages) else None,
            roles,
            texts,
            record.get("split"),
            record.get("source"),
            facts if facts != [] else None,
            *(record.get(k) for k in ("slice", "pair", "line", "_schema", "_shape")),
        )

    def add_fields(  # one parameter a field, no dict: the reader's hot path
        self,
        ident: Any,
        odd: Any,
        roles: tuple[str, ...] | None,
        texts: list[str],
        split: Any,
        source: Any,
        facts: list[str] | None,
        slice_: Any,
        pair: Any,
        line: Any,
        schema: str | None,
        shape: str | None,
    ) -> None:
        """Append a record: its id; its messages when they are not plain {role, content}
        dicts (else None); its roles and contents; the other fields in `to_record`'s order,
        facts None for none."""
        if odd is not None:
            self._odd[len(self.ids)] = odd
        self.ids.append(ident)
        self.roles.append(roles if roles is None else self._role_tuples.setdefault(roles, roles))
        self.texts += texts
        self.bounds.append(len(self.texts))
        self.splits.append(split)
        self.sources.append(source)
        self.facts.append(facts)
        self.slices.append(slice_)
        self.pairs.append(pair)
        self.lines.append(line)
        self.schemas.append(schema)
        self.shapes.append(shape)

    def compact(self) -> Records:
        """Once built: a column with one value in every row (most drops have no source,
        slice, pair or schema problem) becomes that value, not a slot a row."""
        for name in _UNIFORM:
            setattr(self, name, Uniform.of(getattr(self, name)))
        return self

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> Records: ...

    def __getitem__(self, index: int | slice) -> Row | Records:
        if isinstance(index, slice):
            return self._sliced(index)
        index = range(len(self))[index]  # negative indices; IndexError past the end
        if self._rows is not None:
            return self._rows[index]
        return {
            **self._fields(index, self.messages(index)),
            "_schema": self.schemas[index],
            "_shape": self.shapes[index],
        }

    def __iter__(self) -> Iterator[Row]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Records, list)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable, like the list it stands for

    def __repr__(self) -> str:
        return f"Records({len(self)} rows)"

    def messages(self, index: int) -> list[dict[str, str]] | None:
        """Row `index`'s messages, as read."""
        if self._rows is not None:
            return self._rows[index].get("messages")
        if index in self._odd:
            return self._odd[index]
        roles = self.roles[index]
        if roles is None:
            return None
        return [{"role": r, "content": c} for r, c in zip(roles, self.contents(index))]

    def contents(self, index: int) -> list[str]:
        """Row `index`'s message contents (none without a conversation)."""
        return self.texts[self.bounds[index] : self.bounds[index + 1]]

    def spans(self) -> Iterator[tuple[int, int]]:
        """Each row's (start, end) in `texts`."""
        return zip(self.bounds, islice(self.bounds, 1, None))

    def public(self, index: int, messages: list[dict[str, str]]) -> Row:
        """Row `index` with these `messages` and without the gate-only `_` keys: the start
        of what curation makes of it (`curate.normalise_record`)."""
        if self._rows is not None:
            row = {k: v for k, v in self._rows[index].items() if not k.startswith("_")}
            row["messages"] = messages
            return row
        return self._fields(index, messages)

    def _fields(self, index: int, messages: list[dict[str, str]] | None) -> Row:
        """Row `index`'s public fields, in the order the reader writes them."""
        return {
            "id": self.ids[index],
            "messages": messages,
            "split": self.splits[index],
            "source": self.sources[index],
            "facts": self.facts[index] or [],
            "slice": self.slices[index],
            "pair": self.pairs[index],
            "line": self.lines[index],
        }

    def prompts(self) -> list[str | None]:
        """`ingest.prompt_of` of every row."""
        texts = self.texts
        return [prompt(r, texts[a:b]) for r, (a, b) in zip(self.roles, self.spans())]

    def responses(self) -> list[str | None]:
        """`ingest.response_of` of every row."""
        texts = self.texts
        return [response(r, texts[a:b]) for r, (a, b) in zip(self.roles, self.spans())]

    def _sliced(self, index: slice) -> Records:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("Records slices are contiguous")
        stop = max(start, stop)
        part = Records()
        for name in _COLUMNS:
            setattr(part, name, getattr(self, name)[start:stop])
        first = self.bounds[start]
        part.texts = self.texts[first : self.bounds[stop]]
        part.bounds = array("q", [b - first for b in self.bounds[start : stop + 1]])
        part._odd = {i - start: m for i, m in self._odd.items() if start <= i < stop}
        part._rows = None if self._rows is None else self._rows[start:stop]
        part._role_tuples = self._role_tuples
        return part


class Uniform(Sequence[Any]):
    """A column holding one value (the same object) in every one of its rows."""

    def __init__(self, value: Any, n: int) -> None:
        self._value, self._n = value, n

    @staticmethod
    def of(values: Sequence[Any]) -> Sequence[Any]:
        """`values` as a Uniform when every one is the same object, else as they are."""
        if not values or isinstance(values, Uniform):
            return values
        first = values[0]
        same = all(map(operator.is_, values, repeat(first)))
        return Uniform(first, len(values)) if same else values

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._value] * len(range(self._n)[index])
        if not -self._n <= index < self._n:
            raise IndexError("column index out of range")
        return self._value

    def __iter__(self) -> Iterator[Any]:
        return repeat(self._value, self._n)


_UNIFORM = ("roles", "sources", "facts", "slices", "pairs", "schemas", "shapes")


def picked(column: Sequence[Any], rows: Sequence[int]) -> Iterable[Any]:
    """`column[i]` for each of `rows`, in bulk (no Python call a row)."""
    if isinstance(column, Uniform):
        return repeat(column[0] if len(column) else None, len(rows))
    return map(column.__getitem__, rows)


_COLUMNS = (
    *("ids", "roles", "splits", "sources", "facts"),
    *("slices", "pairs", "lines", "schemas", "shapes"),
)


def plain_messages(messages: Any) -> bool:
    """Whether `messages` is a list of dicts with exactly "role" then "content"."""
    return type(messages) is list and all(
        type(m) is dict and list(m) == _CHAT_KEYS for m in messages
    )


def prompt(roles: Sequence[str] | None, contents: Sequence[str] | None) -> str | None:
    """`ingest.prompt_of` on columns: the user turns before the last turn, as one string."""
    if not roles or contents is None:
        return None
    if len(roles) == 2 and roles[0] == "user":  # most rows: one question
        return contents[0]
    turns = [c for r, c in zip(roles[:-1], contents[:-1]) if r == "user"]
    return "\n".join(turns) if turns else None


def response(roles: Sequence[str] | None, contents: Sequence[str] | None) -> str | None:
    """`ingest.response_of` on columns: the last turn when the assistant says it."""
    if not roles or contents is None:
        return None
    return contents[-1] if roles[-1] == "assistant" else None
