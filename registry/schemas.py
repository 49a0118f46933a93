"""The audit's findings: one pydantic row type and the pandera schema the findings table obeys.

A finding is (parent, check, severity, message). ``check`` is a dotted, stable name
(``format.pickle``, ``license.non-commercial``, ``weights.nonfinite`` …) that scripts may match
on; ``parent`` is the model reference as given, or ``*`` for a finding about the set as a whole.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import pandera.pandas as pa
from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "error")
SET_PARENT = "*"
_CHECK_PATTERN = r"^[a-z]+(\.[a-z][a-z-]*)?$"


class Finding(BaseModel):
    model_config = ConfigDict(frozen=True)

    parent: str
    check: str = Field(pattern=_CHECK_PATTERN)
    severity: Severity
    message: str = Field(min_length=1)


FINDINGS_SCHEMA = pa.DataFrameSchema(
    {
        "parent": pa.Column(str, pa.Check.str_length(min_value=1)),
        "check": pa.Column(str, pa.Check.str_matches(_CHECK_PATTERN)),
        "severity": pa.Column(str, pa.Check.isin(SEVERITIES)),
        "message": pa.Column(str, pa.Check.str_length(min_value=1)),
    },
    strict=True,
    ordered=True,
    coerce=False,
    name="audit_findings",
)


def findings_frame(findings: list[Finding]) -> pd.DataFrame:
    """The findings as a validated table (columns parent, check, severity, message)."""
    columns = list(FINDINGS_SCHEMA.columns)
    frame = pd.DataFrame([f.model_dump() for f in findings], columns=columns).astype(str)
    return FINDINGS_SCHEMA.validate(frame)
