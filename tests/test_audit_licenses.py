"""Licences: normalisation, the policy's matrix and obligations, and the audit's licence findings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from audit_helpers import base_tensors, finetune, make_model

from registry.audit import audit_models
from registry.errors import PolicyError
from registry.licenses import DEFAULT_POLICY_PATH, combine, detect_license_text, load_license_policy, normalize_license


@pytest.fixture(scope="module")
def policy():
    return load_license_policy()


@pytest.mark.parametrize("text, expected", [
    ("Apache 2.0", "apache-2.0"), ("apache-2.0", "apache-2.0"), ("Apache License, Version 2.0", "apache-2.0"),
    ("MIT", "mit"), ("CC BY-NC 4.0", "cc-by-nc-4.0"), ("cc-by-nc-sa-4.0", "cc-by-nc-sa-4.0"),
    ("llama3", "llama3"), ("Llama 3", "llama3"), ("llama3.1", "llama3.1"), ("Llama 3.1 Community License", "llama3.1"),
    ("openrail", "openrail"), ("OpenRAIL++", "openrail++"), ("CreativeML OpenRAIL-M", "creativeml-openrail-m"),
    ("bigscience-openrail-m", "bigscience-openrail-m"), ("acme-internal", "acme-internal"),
])
def test_normalisation(policy, text, expected):
    assert normalize_license(text, policy) == expected


def test_license_file_is_recognised(policy):
    apache = "                                 Apache License\n                           Version 2.0, January 2004"
    nc = "Attribution-NonCommercial 4.0 International\n\n=======\nCreative Commons Corporation"
    nc_sa = "Attribution-NonCommercial-ShareAlike 4.0 International"
    assert detect_license_text(apache, policy) == "apache-2.0"
    assert detect_license_text(nc, policy) == "cc-by-nc-4.0"
    assert detect_license_text(nc_sa, policy) == "cc-by-nc-sa-4.0"
    assert detect_license_text("All rights reserved.", policy) is None


def test_effective_license_and_inherited_obligations(policy):
    out = combine([("a", "apache-2.0"), ("b", "cc-by-nc-4.0"), ("c", "llama3"), ("d", "creativeml-openrail-m")],
                  policy, "research")
    assert out.findings == ()
    assert out.effective_license == "cc-by-nc-4.0 AND creativeml-openrail-m AND llama3 AND apache-2.0"
    text = "\n".join(out.obligations)
    assert "cc-by-nc-4.0: non-commercial use only" in text
    assert "llama3: naming: the merged model's name must begin with 'Llama 3'" in text
    assert "Built with Meta Llama 3" in text
    assert "creativeml-openrail-m: use restrictions" in text


def test_matrix_refusals_and_reviews(policy):
    refused = combine([("a", "cc-by-sa-4.0"), ("b", "llama3")], policy, "research")
    assert [(f.check, f.severity) for f in refused.findings] == [("license.compatibility", "error")]
    review = combine([("a", "llama2"), ("b", "llama3")], policy, "research")
    assert [(f.check, f.severity) for f in review.findings] == [("license.compatibility", "warning")]
    nd = combine([("a", "cc-by-nd-4.0")], policy, "research")
    assert [f.check for f in nd.findings] == ["license.no-derivatives"]


def test_cc_by_nc_parent_in_a_commercial_merge_is_refused(tmp_path):
    base = base_tensors()
    make_model(tmp_path / "base", base)
    make_model(tmp_path / "nc", finetune(base, 1), license="cc-by-nc-4.0", base_model="base")
    commercial = audit_models(["base", "nc"], base_dir=tmp_path, intended_use="commercial")
    assert commercial.verdict == "fail"
    [finding] = commercial.errors()
    assert (finding.parent, finding.check) == ("nc", "license.non-commercial")
    research = audit_models(["base", "nc"], base_dir=tmp_path, intended_use="research")
    assert research.verdict == "pass"
    assert any("non-commercial" in o for o in research.obligations)


def test_unknown_license_is_refused_unless_routed_to_review(tmp_path):
    model = make_model(tmp_path / "m", license="other", card_extra="license_name: acme-internal-eval-only\n")
    report = audit_models([model])
    [finding] = report.errors()
    assert finding.check == "license.unknown" and "acme-internal-eval-only" in finding.message
    assert report.parents[0].license == "acme-internal-eval-only"
    assert report.parents[0].license_source == "card:license_name"

    doc = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    doc["review_licenses"] = ["acme-internal-eval-only"]
    custom = tmp_path / "policy.yaml"
    custom.write_text(yaml.safe_dump(doc))
    reviewed = audit_models([model], policy=custom)
    assert reviewed.verdict == "pass"
    assert [(f.check, f.severity) for f in reviewed.findings] == [("license.review", "warning")]
    assert "needs review" in reviewed.findings[0].message


def test_missing_license_and_license_file_fallback(tmp_path):
    bare = make_model(tmp_path / "bare", license=None)
    assert [f.check for f in audit_models([bare]).errors()] == ["license.missing"]
    (bare / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, to any person")
    parent = audit_models([bare]).parents[0]
    assert (parent.license, parent.license_source, parent.verdict) == ("mit", "LICENSE", "pass")


def test_card_and_license_file_disagreeing_is_flagged(tmp_path):
    model = make_model(tmp_path / "m", license="apache-2.0")
    (model / "LICENSE").write_text("Attribution-NonCommercial 4.0 International")
    report = audit_models([model])
    assert [(f.check, f.severity) for f in report.findings] == [("license.mismatch", "warning")]


def test_bad_policy_files_are_usage_errors(tmp_path):
    doc = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    doc["matrix"]["permissive"][1] = "refuse"  # share-alike/permissive stays ok: not symmetric
    bad = tmp_path / "asymmetric.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(PolicyError, match="symmetric"):
        load_license_policy(bad)
    with pytest.raises(PolicyError, match="cannot read"):
        load_license_policy(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(PolicyError, match="mapping"):
        load_license_policy(tmp_path / "list.yaml")


def test_readme_documents_the_shipped_matrix_and_every_licence(policy):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Licence policy", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("**"):
            rows[cells[0].strip("*")] = tuple(cells[1:])
    assert rows == dict(policy.matrix)
    for lid, terms in policy.licenses.items():
        [category_row] = [line for line in section.splitlines() if line.startswith(f"| {terms.category} |")]
        assert lid in category_row.replace(",", " ").split(), lid
