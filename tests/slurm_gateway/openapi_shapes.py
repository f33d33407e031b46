"""The parts of slurmrestd's published OpenAPI documents the gateway relies on.

Derived by hand (facts: property names and types) from the generated documents
of SchedMD's slurmrestd as published in SlinkyProject/slurm-client
``api/v00NN/slurm-openapi.gen.json`` (v0.0.41 from Slurm 24.05.8, v0.0.42 from
24.11.6, v0.0.43 from 25.05.8, v0.0.44 from 25.11.7) and, for v0.0.40, from the
models generated from the v0.0.40 document (mever-team/slurm-rest-py
``docs/V0040JobDescMsg.md``, ``docs/V0040JobInfo.md``). See docs/slurm-gateway.md.

Shape language: "string" | "integer" | "boolean" | {"array": item} |
{"enum_array": [...]} | {"object": {name: shape}}.
"""

from __future__ import annotations

from typing import Any

NO_VAL = {"object": {"set": "boolean", "infinite": "boolean", "number": "integer"}}

_STATES_41 = [
    "PENDING", "RUNNING", "SUSPENDED", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
    "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "LAUNCH_FAILED",
    "UPDATE_DB", "REQUEUED", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESIZING", "CONFIGURING",
    "COMPLETING", "STOPPED", "RECONFIG_FAIL", "POWER_UP_NODE", "REVOKED", "REQUEUE_FED",
    "RESV_DEL_HOLD", "SIGNALING", "STAGE_OUT",
]  # fmt: skip
_STATES_42 = [s for s in _STATES_41 if s != "UPDATE_DB"]
_STATES_44 = [*_STATES_42, "EXPEDITING"]

_JOB_DESC = {
    "name": "string",
    "comment": "string",
    "current_working_directory": "string",
    "standard_output": "string",
    "standard_error": "string",
    "cpus_per_task": "integer",
    "hold": "boolean",
    "reservation": "string",
    "partition": "string",
    "environment": {"array": "string"},
    "time_limit": NO_VAL,
    "open_mode": {"enum_array": ["APPEND", "TRUNCATE"]},
    "script": "string",
    "memory_per_node": NO_VAL,
}

_EXIT_VERBOSE = {
    "object": {
        "status": {
            "enum_array": ["INVALID", "PENDING", "SUCCESS", "ERROR", "SIGNALED", "CORE_DUMPED"]
        },
        "return_code": NO_VAL,
        "signal": {"object": {"id": NO_VAL, "name": "string"}},
    }
}


def _job_info(states: list[str] | None) -> dict[str, Any]:
    return {
        "job_id": "integer",
        "name": "string",
        "comment": "string",
        "job_state": {"enum_array": states} if states else {"array": "string"},
        "state_reason": "string",
        "exit_code": _EXIT_VERBOSE,
        "priority": NO_VAL,
        "hold": "boolean",
        "standard_output": "string",
    }


_PATHS = {"/job/submit", "/job/{job_id}", "/jobs/", "/ping/"}

SHAPES: dict[str, dict[str, Any]] = {
    "v0.0.40": {
        "job_desc_msg": {k: v for k, v in _JOB_DESC.items() if k != "open_mode"}
        | {"open_mode": {"array": "string"}},
        "job_info": _job_info(None),
        "submit_response": {"job_id", "step_id", "job_submit_user_msg", "meta", "errors"},
        "paths": _PATHS,
    },
    "v0.0.41": {
        "job_desc_msg": _JOB_DESC,
        "job_info": _job_info(_STATES_41),
        "submit_response": {"result", "job_id", "step_id", "job_submit_user_msg", "meta", "errors", "warnings"},
        "paths": _PATHS,
    },
    "v0.0.42": {
        "job_desc_msg": _JOB_DESC,
        "job_info": _job_info(_STATES_42),
        "submit_response": {"job_id", "step_id", "job_submit_user_msg", "meta", "errors", "warnings"},
        "paths": _PATHS,
    },
    "v0.0.43": {
        "job_desc_msg": _JOB_DESC,
        "job_info": _job_info(_STATES_42),
        "submit_response": {"job_id", "step_id", "job_submit_user_msg", "meta", "errors", "warnings"},
        "paths": _PATHS,
    },
    "v0.0.44": {
        "job_desc_msg": _JOB_DESC,
        "job_info": _job_info(_STATES_44),
        "submit_response": {"job_id", "step_id", "job_submit_user_msg", "meta", "errors", "warnings"},
        "paths": _PATHS,
    },
}  # fmt: skip


def violations(value: Any, shape: Any, where: str = "$") -> list[str]:
    """Where ``value`` does not fit ``shape`` (empty list: it fits)."""
    if shape == "string":
        return [] if isinstance(value, str) else [f"{where}: not a string"]
    if shape == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: not a boolean"]
    if shape == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: not an integer"]
    if "array" in shape:
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [
            e for i, v in enumerate(value) for e in violations(v, shape["array"], f"{where}[{i}]")
        ]
    if "enum_array" in shape:
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [
            f"{where}[{i}]: {v!r} not in enum"
            for i, v in enumerate(value)
            if v not in shape["enum_array"]
        ]
    if "object" in shape:
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        out = []
        for key, sub in value.items():
            if key not in shape["object"]:
                out.append(f"{where}.{key}: not in the schema")
            else:
                out += violations(sub, shape["object"][key], f"{where}.{key}")
        return out
    raise ValueError(f"bad shape {shape!r}")
