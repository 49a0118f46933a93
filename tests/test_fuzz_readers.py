"""Bounded fuzzing of the two parsers that read attacker-shaped bytes first: the safetensors header
and the model card's front matter. Either returns or raises a mergeops error; nothing else.

``MERGEOPS_FUZZ_EXAMPLES`` raises the example count (200 by default keeps ``make test`` quick).
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge.errors import MergeopsError
from merge.safetensors_header import read_header
from registry.audit_sources import read_card

EXAMPLES = int(os.environ.get("MERGEOPS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["F32", "BF16", "I64", "__metadata__", "dtype", "shape", "data_offsets"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "w", "x"]) | st.text(max_size=4),
        inner, max_size=4),
    max_leaves=20)
_entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "U8", "XX"]) | _json,
                                "shape": st.lists(st.integers(-2, 6), max_size=3) | _json,
                                "data_offsets": st.lists(st.integers(-4, 64), min_size=2, max_size=2) | _json})
_header = st.dictionaries(st.text(max_size=6), _entry | _json, max_size=4)


@FUZZ
@given(header=_header | _json, buffer=st.binary(max_size=64), mangle=st.sampled_from(["json", "length", "bytes"]),
       noise=st.binary(max_size=32))
def test_header_parser_returns_or_raises_a_mergeops_error(header, buffer, mangle, noise):
    doc = json.dumps(header).encode()
    if mangle == "bytes":  # not JSON at all, or not UTF-8
        doc = noise + doc[: len(doc) // 2]
    n = len(doc) + (len(noise) if mangle == "length" else 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        path.write_bytes(struct.pack("<Q", n) + doc + buffer)
        try:
            read_header(path)
        except MergeopsError:
            pass


_tokens = st.sampled_from(list("ab:-&*[]{}!|>'\"# \n\t,?%@`1\ufeff") + [
    "license: ", "base_model: ", "&x ", "*x", "!!python/object:os.system ", "---", "\n  - ", "<<: *x"])
_card_yaml = st.lists(_tokens, max_size=40).map("".join)


@FUZZ
@given(front=_card_yaml | st.text(max_size=120), raw=st.binary(max_size=64), as_bytes=st.booleans())
def test_card_front_matter_reader_returns_or_raises_a_mergeops_error(front, raw, as_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        card.write_bytes(raw if as_bytes else f"---\n{front}\n---\n# card\n".encode("utf-8", "surrogatepass"))
        try:
            doc, findings = read_card(Path(tmp), "fuzz")
        except MergeopsError:
            return
        assert isinstance(doc, dict) and all(f.parent == "fuzz" for f in findings)
