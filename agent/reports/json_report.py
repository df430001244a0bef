"""The JSON report: the whole deployment as one document.

``{"schema": 1, "deployments": [{outcome, timings, "events": [...], "hooks": [...], "install": {...},
"files": [...], "notices": [...], "records": [the raw event records]}]}``. Pure: summaries in, text out.
"""
from __future__ import annotations

import json
from typing import Any

from agent.reports.model import DeploymentSummary, Record, split_by_deployment, summarize

REPORT_SCHEMA = 1


def build(records: list[Record], deployments: list[DeploymentSummary] | None = None) -> dict[str, Any]:
    groups = split_by_deployment(records)
    deps = deployments if deployments is not None else [summarize(g) for g in groups]
    return {"schema": REPORT_SCHEMA,
            "deployments": [dict(dep, records=group) for dep, group in zip(deps, groups, strict=False)]}


def render(records: list[Record], deployments: list[DeploymentSummary] | None = None) -> str:
    return json.dumps(build(records, deployments), indent=2, default=str) + "\n"
