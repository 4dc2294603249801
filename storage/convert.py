"""Vocabulary <-> rows: the only place that knows both ``probes.model`` and the table layout.

Guarantees: a Run, Measurement or Verdict written and read back compares equal to the original
(observations rebuilt with ``observation_from_dict``, targets with ``Target.from_dict``);
datetimes must be timezone-aware (``ValueError`` otherwise).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from blockwatch.probes.model import (
    Measurement,
    Run,
    RunInputs,
    Target,
    Verdict,
    observation_from_dict,
)
from blockwatch.storage.tables import RunRow, VerdictRow
from blockwatch.storage.types import ensure_utc, format_utc


def run_to_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "vantage": run.vantage,
        "country": run.country,
        "asn": run.asn,
        "group_name": run.group,
        "started_at": ensure_utc(run.started_at, "Run.started_at"),
        "finished_at": None if run.finished_at is None else ensure_utc(run.finished_at),
        "status": run.status,
        "software_version": run.software_version,
        "config_hash": run.config_hash,
        "baseline": dict(run.baseline),
        "summary": dict(run.summary),
        "control_for": run.control_for,
        **inputs_to_row(run.inputs),
    }


def inputs_to_row(inputs: RunInputs | None) -> dict[str, Any]:
    if inputs is None:
        return dict.fromkeys(("control_resolvers", "control_vantages", "local_networks",
                              "controls_since", "controls_until"))
    return {
        "control_resolvers": list(inputs.control_resolvers),
        "control_vantages": list(inputs.control_vantages),
        "local_networks": list(inputs.local_networks),
        "controls_since": None if inputs.controls_since is None
        else ensure_utc(inputs.controls_since, "RunInputs.controls_since"),
        "controls_until": None if inputs.controls_until is None
        else ensure_utc(inputs.controls_until, "RunInputs.controls_until"),
    }


def inputs_from_row(row: RunRow) -> RunInputs | None:
    if row.control_resolvers is None:
        return None
    return RunInputs(control_resolvers=tuple(row.control_resolvers),
                     control_vantages=tuple(row.control_vantages or ()),
                     local_networks=tuple(row.local_networks or ()),
                     controls_since=row.controls_since, controls_until=row.controls_until)


def run_from_row(row: RunRow) -> Run:
    return Run(
        id=row.id,
        vantage=row.vantage,
        started_at=row.started_at,
        country=row.country,
        asn=row.asn,
        finished_at=row.finished_at,
        status=row.status,
        software_version=row.software_version,
        config_hash=row.config_hash,
        group=row.group_name,
        baseline=row.baseline,
        summary=row.summary,
        inputs=inputs_from_row(row),
        control_for=row.control_for,
    )


def measurement_to_row(m: Measurement) -> dict[str, Any]:
    return {
        "id": m.id,
        "run_id": m.run_id,
        "vantage": m.vantage,
        "service": m.target.service,
        "category": m.target.category,
        "probe": m.target.probe,
        "probe_version": m.probe_version,
        "target": m.target.key,
        "target_json": m.target.to_dict(),
        "started_at": ensure_utc(m.started_at, "Measurement.started_at"),
        "runtime_s": m.runtime_s,
        "queued_s": m.queued_s,
        "failure": m.failure,
        "failed_operation": m.failed_operation,
        # the observations themselves: storage.db's JSON serializer writes dataclasses
        "observations": list(m.observations),
    }


def measurement_from_row(row: Mapping[str, Any]) -> Measurement:
    """Raises KeyError/TypeError/ValueError when the stored JSON is not what this version
    writes (the caller names the measurement)."""
    return Measurement(
        id=row["id"],
        run_id=row["run_id"],
        vantage=row["vantage"],
        target=Target.from_dict(row["target_json"]),
        probe_version=row["probe_version"],
        started_at=row["started_at"],
        runtime_s=row["runtime_s"],
        queued_s=row.get("queued_s") or 0.0,
        observations=tuple(observation_from_dict(o) for o in row["observations"]),
        failure=row["failure"],
        failed_operation=row["failed_operation"],
    )


def verdict_to_row(v: Verdict, *, run_id: str, created_at: dt.datetime) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "measurement_id": v.measurement_id,
        "service": v.service,
        "verdict": v.verdict,
        "layer": v.layer,
        "rule_id": v.rule_id,
        "analyzer_version": v.analyzer_version,
        "evidence": v.evidence,
        "details": dict(v.details),
        "created_at": created_at,
    }


def verdict_from_row(row: VerdictRow) -> Verdict:
    return Verdict(
        verdict=row.verdict,
        rule_id=row.rule_id,
        analyzer_version=row.analyzer_version,
        service=row.service,
        measurement_id=row.measurement_id,
        layer=row.layer,
        evidence=row.evidence,
        details=row.details,
    )


def export_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One export record (see ``storage.export.EXPORT_FIELDS``) from a joined result row."""
    return {
        "measurement_id": row["id"],
        "run_id": row["run_id"],
        "vantage": row["vantage"],
        "service": row["service"],
        "target": row["target"],
        "probe": row["probe"],
        "started_at": format_utc(row["started_at"]),
        "runtime_s": row["runtime_s"],
        "failure": row["failure"],
        "verdict": row["verdict"],
        "rule_id": row["rule_id"],
        "analyzer_version": row["analyzer_version"],
        "observations": row["observations"],
        "category": row.get("category"),
        "queued_s": row.get("queued_s") or 0.0,
        "probe_version": row["probe_version"],
        "failed_operation": row["failed_operation"],
        "evidence": row["evidence"],
        "country": row["country"],
        "asn": row["asn"],
        # beyond EXPORT_FIELDS (the OONI export's): the target's fields, the verdict's layer,
        # the run's start and software
        "target_json": row.get("target_json"),
        "verdict_layer": row.get("verdict_layer"),
        "run_started_at": format_utc(row["run_started_at"]) if row.get("run_started_at")
        else None,
        "software_version": row.get("software_version"),
    }
