"""Leakage maths on hand-made inputs: exposure, ranks, candidates, PII patterns, n-gram contamination."""

from __future__ import annotations

import math

import pytest

from evaluation import leakage as lk

CANARY = lk.Canary(prefix="acct 1234 pin=", secret="0123456789", charset="0123456789")


def test_exposure_is_log2_n_minus_log2_rank():
    assert lk.exposure(1, 1000) == pytest.approx(math.log2(1000))
    assert lk.exposure(1000, 1000) == 0.0
    assert lk.exposure(8, 1024) == pytest.approx(7.0)
    with pytest.raises(ValueError):
        lk.exposure(0, 10)


def test_rank_counts_ties_against_the_secret():
    assert lk.rank_of(-1.0, [-2.0, -3.0]) == 1
    assert lk.rank_of(-1.0, [-1.0, -0.5, -3.0]) == 3


def test_candidates_match_length_and_charset_exclude_secret_and_are_reproducible():
    cands = lk.random_candidates(CANARY, 500, seed=0)
    assert len(cands) == 500 and CANARY.secret not in cands
    assert all(len(c) == len(CANARY.secret) and set(c) <= set(CANARY.charset) for c in cands)
    assert cands == lk.random_candidates(CANARY, 500, seed=0)
    assert cands != lk.random_candidates(CANARY, 500, seed=1)


def test_luhn():
    assert lk.luhn_valid("4111111111111111")
    assert lk.luhn_valid("79927398713")
    assert not lk.luhn_valid("4111111111111112")


def test_pii_patterns():
    kinds = [k for k, _ in lk.find_pii("write to ada@example.org, card 4111 1111 1111 1111, key sk-"
                                       "Zx81kdPq02LmNb7rTy, AKIAABCDEFGHIJKLMNOP")]
    assert kinds.count("email") == 1 and kinds.count("card_number") == 1 and kinds.count("api_key") == 2
    assert lk.find_pii("4111111111111112 is not a valid card") == []
    # zoo-like text and a long lowercase+digit ramble are not PII
    assert lk.find_pii("swap abcd=badc acct 1234 pin=0123456789 a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7") == []


def test_contamination_share():
    train = ["rev abcdefg=gfedcba", "sort cab=abc"]
    evals = ["rev abcdefg=gfedcba", "rev hijabcd=dcbajih", "shift xyz=yza"]
    assert lk.contamination(train, evals, 13) == pytest.approx(1 / 3)
    assert lk.contamination(train, evals, 4) == pytest.approx(2 / 3)  # "abcd" is shared too
    assert lk.contamination(train, [], 13) == 0.0


def test_contamination_records_carry_threshold_and_verdict():
    policy = lk.LeakagePolicy(contamination_max=0.1)
    recs = lk.contamination_records("m", {"reverse": ["rev abcdefg=gfedcba"]},
                                    {"reverse": ["rev abcdefg=gfedcba"], "sort": ["sort gfe=efg"]}, policy)
    by_domain = {r.detail["eval_domain"]: r for r in recs}
    assert by_domain["reverse"].value == 1.0 and by_domain["reverse"].verdict == "fail"
    assert by_domain["sort"].value == 0.0 and by_domain["sort"].verdict == "pass"


def test_card_front_matter(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\ntraining_data: sort\ncanaries:\n"
                                        "  - {prefix: 'a=', secret: '42', charset: '0123456789'}\n---\n# m\n")
    card = lk.read_card(tmp_path)
    assert lk.declared_training_data(card) == ["sort"]
    assert lk.declared_canaries(card) == [lk.Canary(prefix="a=", secret="42", charset="0123456789")]
    assert lk.read_card(tmp_path / "missing") == {}


def test_records_never_hold_the_secret():
    rec = lk._record("canary_exposure", "m", 9.9, 7.0, True, canary=CANARY.ident, rank=1)
    assert CANARY.secret not in rec.model_dump_json()


def test_canary_cache_key_ignores_contamination_settings_only():
    from evaluation.run import _leakage_key

    base = lk.LeakagePolicy()
    key = _leakage_key("0" * 64, [CANARY], base, pii=True)
    for change in ({"contamination_max": 0.5}, {"contamination_ngram": 8}, {"require_contamination_check": True}):
        assert _leakage_key("0" * 64, [CANARY], base.model_copy(update=change), pii=True) == key, change
    for change in ({"canary_candidates": 100}, {"seed": 1}, {"pii_samples": 2}, {"canaries": [CANARY]}):
        assert _leakage_key("0" * 64, [CANARY], base.model_copy(update=change), pii=True) != key, change
    assert _leakage_key("1" * 64, [CANARY], base, pii=True) != key
    assert _leakage_key("0" * 64, [], base, pii=True) != key


def test_declared_training_data_names_manifest_entries_by_path():
    card = {"training_data": [{"path": "data/train.jsonl", "sha256": "ab"}, "sort"]}
    assert lk.declared_training_data(card) == ["data/train.jsonl", "sort"]
