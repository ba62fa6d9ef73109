"""The key tables of the docs are generated from the config Structs and must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest

from sendqueue.shared import config_docs
from sendqueue.shared.config import Config
from sendqueue.shared.config_fields import doc, key_docs, toml_value
from sendqueue.shared.destination_config import KINDS, TlsConfig
from sendqueue.shared.durations import Duration

ROOT = Path(__file__).resolve().parents[3]
STALE = (
    "# Title\n\nProse.\n\n"
    "<!-- BEGIN generated:tls -->\n| old |\n<!-- END generated:tls -->\n\nMore.\n"
)


@pytest.mark.parametrize("name", config_docs.DOCS)
def test_the_docs_say_what_the_config_structs_say(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert config_docs.regenerate(text) == text, (
        f"{name} differs from the config Structs: run python -m sendqueue.shared.config_docs"
    )


def test_every_table_appears_in_the_docs():
    used = {r for name in config_docs.DOCS for r in config_docs.regions((ROOT / name).read_text())}
    assert used == set(config_docs.TABLES)


def test_every_key_of_every_section_documents_itself():
    sections = [Config, TlsConfig, *KINDS.values()]
    sections += [f.type for f in msgspec.structs.fields(Config) if isinstance(f.type, type)]
    for section in sections:
        assert all(key.description for key in key_docs(section)), section


def test_a_key_without_doc_is_refused() -> None:
    class Undocumented(msgspec.Struct):
        documented: Annotated[int, doc("has one")] = 1
        bare: int = 2

    with pytest.raises(TypeError, match="'bare' has no doc"):
        key_docs(Undocumented)


def test_a_stale_table_is_rewritten_and_the_prose_around_it_kept():
    fresh = config_docs.regenerate(STALE)
    assert fresh.startswith("# Title\n\nProse.\n\n<!-- BEGIN generated:tls -->\n| key |")
    assert fresh.endswith("<!-- END generated:tls -->\n\nMore.\n")
    assert "| `verify` | `true` |" in fresh and "| old |" not in fresh
    assert config_docs.regenerate(fresh) == fresh


def test_an_unknown_table_name_is_an_error():
    with pytest.raises(KeyError, match="no generated table named 'nope'"):
        config_docs.regenerate("<!-- BEGIN generated:nope -->\n<!-- END generated:nope -->")


def test_check_reports_a_stale_doc_and_the_command_rewrites_it(tmp_path, capsys):
    doc_file = tmp_path / "doc.md"
    doc_file.write_text(STALE)
    # --check only reports
    assert config_docs.main(["--check", str(doc_file)]) == 1
    assert doc_file.read_text() == STALE
    assert "differs from the config Structs" in capsys.readouterr().err
    # without it, the file is rewritten, after which --check is content
    assert config_docs.main([str(doc_file)]) == 0
    assert config_docs.main(["--check", str(doc_file)]) == 0
    assert doc_file.read_text() == config_docs.regenerate(STALE)


def test_a_kind_table_has_only_that_kinds_own_keys():
    assert [k.name for k in config_docs.own_keys("dicomweb")][-2:] == [
        "batch_max_instances",
        "batch_max_bytes",
    ]
    assert "host" not in {k.name for k in config_docs.own_keys("orthanc")}
    assert [k.name for k in config_docs.common_destination_keys()][:2] == ["name", "kind"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Duration(90), '`"90s"`'),
        ([Duration(10), Duration(60)], '`["10s", "1m"]`'),
        (True, "`true`"),
        ("", '`""`'),
        ({}, "`{}`"),
        (0.2, "`0.2`"),
        (None, "none"),
    ],
)
def test_defaults_are_shown_as_toml(value, text):
    assert toml_value(value) == text
