"""The key tables of docs/configuration.md and docs/destinations.md, written from the Structs.

    python -m sendqueue.shared.config_docs            # rewrite the docs
    python -m sendqueue.shared.config_docs --check    # exit 1 if a doc differs

Each table sits between `<!-- BEGIN generated:NAME -->` and `<!-- END generated:NAME -->`;
the prose around the markers is hand-written and kept. A key's description and default
come from its doc() (shared/config_fields.py), so a key added, removed or redescribed in
code shows up in the docs at the next run, and tests/unit/shared/test_config_docs.py
fails until it does.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from sendqueue.shared.config import (
    AmqpConfig,
    IngestConfig,
    OrthancConfig,
    RetryConfig,
    RouteConfig,
    SenderConfig,
)
from sendqueue.shared.config_fields import KeyDoc, key_docs
from sendqueue.shared.destination_config import (
    KIND_DOC,
    KINDS,
    DestinationConfigBase,
    ModifyConfig,
    TlsConfig,
    kinds_with,
)

#: The generated docs, relative to the repository's root.
DOCS = ("docs/configuration.md", "docs/destinations.md")
_REGION = re.compile(
    r"(?P<begin><!-- BEGIN generated:(?P<name>[\w-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END generated:(?P=name) -->)",
    re.DOTALL,
)
_KIND = KeyDoc("kind", '`"dicom"`', KIND_DOC)


def _row(*cells: str) -> str:
    # A "|" inside a cell, even in a code span, would end the cell in GitHub's tables.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def key_table(keys: Sequence[KeyDoc]) -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [_row(f"`{k.name}`", k.default, k.description) for k in keys]
    return "\n".join(lines) + "\n"


def _section(struct: type[msgspec.Struct]) -> Callable[[], str]:
    return lambda: key_table(key_docs(struct))


def common_destination_keys() -> list[KeyDoc]:
    """The keys of every kind, `kind` (the union's tag) right after `name`."""
    keys = key_docs(DestinationConfigBase)
    return [keys[0], _KIND, *keys[1:]]


def own_keys(kind: str) -> list[KeyDoc]:
    """The keys only some kinds have, for one of them."""
    common = {k.name for k in key_docs(DestinationConfigBase)}
    return [k for k in key_docs(KINDS[kind]) if k.name not in common]


def _kind_table(kind: str) -> Callable[[], str]:
    return lambda: key_table(own_keys(kind))


def destinations_table() -> str:
    """Every destination key with the kinds it belongs to (docs/destinations.md)."""
    lines = ["| key | kinds | default | meaning |", "|---|---|---|---|"]
    lines += [
        _row(f"`{k.name}`", "all", k.default, k.description) for k in common_destination_keys()
    ]
    seen: set[str] = set()
    for kind in KINDS:
        for key in own_keys(kind):
            if key.name not in seen:
                seen.add(key.name)
                kinds = ", ".join(kinds_with(key.name))
                lines.append(_row(f"`{key.name}`", kinds, key.default, key.description))
    return "\n".join(lines) + "\n"


TABLES: dict[str, Callable[[], str]] = {
    "orthanc": _section(OrthancConfig),
    "amqp": _section(AmqpConfig),
    "ingest": _section(IngestConfig),
    "sender": _section(SenderConfig),
    "retry": _section(RetryConfig),
    "destinations-common": lambda: key_table(common_destination_keys()),
    **{f"destinations-{kind}": _kind_table(kind) for kind in KINDS},
    "destinations": destinations_table,
    "tls": _section(TlsConfig),
    "modify": _section(ModifyConfig),
    "routes": _section(RouteConfig),
}


def regenerate(text: str) -> str:
    """The document with every generated region written afresh from the Structs."""

    def fill(region: re.Match[str]) -> str:
        name = region["name"]
        if name not in TABLES:
            raise KeyError(f"no generated table named {name!r} (known: {', '.join(TABLES)})")
        return region["begin"] + TABLES[name]() + region["end"]

    return _REGION.sub(fill, text)


def regions(text: str) -> list[str]:
    """The names of the generated regions of a document, in order."""
    return [region["name"] for region in _REGION.finditer(text)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sendqueue.shared.config_docs")
    parser.add_argument("--check", action="store_true", help="only report docs that differ")
    parser.add_argument("files", nargs="*", default=list(DOCS), help=f"default: {DOCS}")
    args = parser.parse_args(argv)
    stale = []
    for name in args.files:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        fresh = regenerate(text)
        if fresh == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(fresh, encoding="utf-8")
    verb = "differs from the config Structs" if args.check else "rewritten"
    for name in stale:
        print(f"{name}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
