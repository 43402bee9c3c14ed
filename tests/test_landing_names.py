"""medmeta.landing.names: any file name shown on one harmless line, hashed and written as JSON."""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st

from medmeta.landing.names import display_name, json_name, name_bytes


def test_a_plain_name_is_shown_as_it_is():
    assert display_name("site_a/Patient.ndjson") == "site_a/Patient.ndjson"
    assert display_name("Ärzte/naïve.csv") == "Ärzte/naïve.csv"


def test_ansi_escapes_and_newlines_are_shown_escaped():
    shown = display_name("\x1b[2J\x1b[31mFAKE ok\n.csv")
    assert shown == "\\x1b[2J\\x1b[31mFAKE ok\\n.csv"
    assert shown.isprintable()


def test_undecodable_bytes_are_shown_as_hex():
    name = os.fsdecode(b"\xff\xfe.csv")
    assert display_name(name) == "\\xff\\xfe.csv"
    assert name_bytes(name) == b"\xff\xfe.csv"
    assert json_name(name) == "\\xff\\xfe.csv"


def test_bidi_overrides_and_c1_controls_are_escaped():
    assert display_name("a\u202egpj.csv") == "a\\u202egpj.csv"
    assert display_name("a\x9b31m") == "a\\x9b31m"


def test_a_backslash_is_doubled_so_names_stay_apart():
    assert display_name("a\\xff") != display_name(os.fsdecode(b"a\xff"))


@given(st.binary(min_size=1, max_size=40))
def test_every_name_is_shown_printable_and_kept_exactly(raw):
    name = os.fsdecode(raw)
    assert display_name(name).isprintable()
    assert name_bytes(name) == raw
    json.dumps(json_name(name), ensure_ascii=False).encode("utf-8")


@given(st.text(max_size=40))
def test_every_text_is_shown_printable_and_encodable(name):
    assert display_name(name).isprintable()
    display_name(name).encode("utf-8")
    json_name(name).encode("utf-8")
    name_bytes(name)
