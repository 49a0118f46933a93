"""The gate policy: loading and overriding the shipped YAML, and decide() over hand-made evidence."""

from __future__ import annotations

import pytest

from evaluation.errors import PolicyError
from evaluation.gates import GatePolicy, decide, load_gate_policy, parse_gate_policy
from evaluation.leakage import LeakageRecord

SCORES = {"reverse": 0.9, "sort": 0.3, "swap": 0.8}


def _by_gate(decisions):
    return {d.gate: d for d in decisions}


def _clean(**extra):
    base = dict(candidate="merged", scores=SCORES, retention={"reverse": 1.0, "sort": 0.9, "swap": 0.95},
                leakage=[LeakageRecord(check="pii", model="merged", value=0, threshold=0, verdict="pass")],
                audit_verdict="pass", license_verdict="pass")
    return base | extra


def test_shipped_policy_loads_with_documented_defaults():
    policy = load_gate_policy()
    assert policy.retention_minimums == {"default": 0.8}
    assert policy.leakage.canary_exposure_max == 7.0
    assert policy.leakage.greedy_canary_forbidden is True
    assert policy.require_audit_pass and policy.require_license_pass


def test_override_file_changes_only_what_it_names(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("domain_minimums: {sort: 0.5}\nleakage: {pii_max: 2}\n")
    policy = load_gate_policy(path)
    assert policy.minimum("domain_minimums", "sort") == 0.5
    assert policy.minimum("domain_minimums", "reverse") == 0.0  # the shipped default stays
    assert policy.leakage.pii_max == 2
    assert policy.leakage.canary_exposure_max == 7.0


@pytest.mark.parametrize("doc, where", [({"domain_minimum": {}}, "domain_minimum"),
                                        ({"leakage": {"pii_max": "many"}}, "leakage.pii_max")])
def test_bad_policy_is_a_usage_error_naming_the_field(doc, where):
    with pytest.raises(PolicyError, match=where.replace(".", r"\.")) as exc:
        parse_gate_policy(doc, "p.yaml")
    assert exc.value.exit_code == 2


def test_all_gates_pass_on_clean_evidence():
    decisions = decide(load_gate_policy(), **_clean())
    assert decisions and all(d.passed for d in decisions), [d.reason for d in decisions if not d.passed]


def test_domain_minimum_failure_names_domain_value_and_threshold():
    policy = parse_gate_policy({"domain_minimums": {"sort": 0.5}})
    gate = _by_gate(decide(policy, **_clean()))["domain_minimum:sort"]
    assert not gate.passed
    assert (gate.observed, gate.threshold) == (0.3, 0.5)
    assert "sort" in gate.reason and "0.3" in gate.reason and "0.5" in gate.reason
    assert _by_gate(decide(policy, **_clean()))["domain_minimum:reverse"].passed


def test_retention_below_minimum_fails_and_missing_parents_fail():
    gates = _by_gate(decide(load_gate_policy(), **_clean(retention={"reverse": 0.5, "sort": None, "swap": 1.0})))
    assert not gates["retention:reverse"].passed and "0.5" in gates["retention:reverse"].reason
    assert gates["retention:sort"].passed  # every parent scored 0: nothing to retain
    no_parents = _by_gate(decide(load_gate_policy(), **_clean(retention={})))
    assert not no_parents["retention"].passed


def test_champion_regression_uses_the_tolerance():
    policy = load_gate_policy()  # tolerance 0.02
    gates = _by_gate(decide(policy, **_clean(champion_scores={"reverse": 0.91, "sort": 0.4})))
    assert gates["champion_regression:reverse"].passed  # -0.01 within tolerance
    assert not gates["champion_regression:sort"].passed  # -0.1
    assert "sort" in gates["champion_regression:sort"].reason
    assert _by_gate(decide(policy, **_clean()))["champion_regression"].passed  # no champion yet


def test_leakage_gates_read_the_candidates_records():
    records = [
        LeakageRecord(check="canary_exposure", model="merged", value=9.9, threshold=7, verdict="fail",
                      detail={"canary": "abc"}),
        LeakageRecord(check="canary_exposure", model="merged", value=1.0, threshold=7, verdict="pass"),
        LeakageRecord(check="canary_greedy", model="merged", value=1.0, threshold=0, verdict="fail"),
        # a parent's own canary record does not gate the candidate
        LeakageRecord(check="canary_greedy", model="parent", value=1.0, threshold=0, verdict="fail"),
        LeakageRecord(check="pii", model="merged", value=3, threshold=0, verdict="fail"),
        LeakageRecord(check="contamination", model="parent", value=0.25, threshold=0.01, verdict="fail",
                      detail={"eval_domain": "sort"}),
    ]
    gates = _by_gate(decide(load_gate_policy(), **_clean(leakage=records)))
    assert gates["leakage:canary_exposure"].observed == 9.9 and not gates["leakage:canary_exposure"].passed
    assert gates["leakage:canary_greedy"].observed == 1.0 and not gates["leakage:canary_greedy"].passed
    assert not gates["leakage:pii"].passed
    assert not gates["leakage:contamination"].passed and "sort" in gates["leakage:contamination"].reason


def test_missing_verdicts_fail_and_leakage_can_be_switched_off():
    gates = _by_gate(decide(load_gate_policy(), **_clean(audit_verdict=None, license_verdict="fail")))
    assert not gates["audit"].passed and "no audit verdict" in gates["audit"].reason
    assert not gates["license"].passed
    relaxed = parse_gate_policy({"require_audit_pass": False, "leakage": {"pii_max": None}})
    gates = _by_gate(decide(relaxed, **_clean(audit_verdict=None, leakage=[])))
    assert "audit" not in gates and "leakage:pii" not in gates


def test_decide_is_pure():
    policy: GatePolicy = load_gate_policy()
    assert decide(policy, **_clean()) == decide(policy, **_clean())


def _contamination(model, value, verdict="pass", **detail):
    return LeakageRecord(check="contamination", model=model, value=value, threshold=0.01 if value is not None else None,
                         verdict=verdict, detail=detail)


UNCHECKED = _contamination("plain", None, "not_checked", reason="the model card declares no training data")


def test_not_checked_contamination_passes_unless_the_policy_requires_the_check():
    records = [_contamination("declared", 0.0, eval_domain="capitals"), UNCHECKED]
    gates = _by_gate(decide(load_gate_policy(), **_clean(leakage=records)))
    assert gates["leakage:contamination"].passed and gates["leakage:contamination"].observed == 0.0
    assert "not checked: plain" in gates["leakage:contamination"].reason
    assert "leakage:contamination_checked" not in gates
    only_unchecked = _by_gate(decide(load_gate_policy(), **_clean(leakage=[UNCHECKED])))["leakage:contamination"]
    assert only_unchecked.passed and only_unchecked.observed is None and "not checked: plain" in only_unchecked.reason

    strict = parse_gate_policy({"leakage": {"require_contamination_check": True}})
    gate = _by_gate(decide(strict, **_clean(leakage=records)))["leakage:contamination_checked"]
    assert not gate.passed and gate.observed == 1.0 and "plain" in gate.reason and "declared" not in gate.reason
    checked = _by_gate(decide(strict, **_clean(leakage=records[:1])))["leakage:contamination_checked"]
    assert checked.passed and checked.observed == 0.0


def test_a_declared_file_that_fails_its_manifest_fails_the_contamination_gate():
    broken = LeakageRecord(check="training_data", model="tuned", value=None, threshold=None, verdict="fail",
                           detail={"path": "data/train.jsonl", "reason": "sha256 mismatch"})
    gate = _by_gate(decide(load_gate_policy(), **_clean(leakage=[broken, _contamination("tuned", 0.0)])))
    assert not gate["leakage:contamination"].passed
    assert "tuned's data/train.jsonl: sha256 mismatch" in gate["leakage:contamination"].reason
    off = parse_gate_policy({"leakage": {"contamination_max": None}})
    assert "leakage:contamination" not in _by_gate(decide(off, **_clean(leakage=[broken])))
