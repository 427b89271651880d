"""Running a crew for a flow: in a worker thread, with metering failures turned into a clean end.

A crew that stops because the ledger refused a call (BudgetExceeded) or could not meter it is not
an error of the crew: the flow ends as failed with that reason, and the tenant's stream gets an
`error_notification` and a final `flow_update` saying so.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from actors.notifications import StreamNotifier
from crews.metering import MeteringError

log = logging.getLogger("raytenant.crews")


@dataclass
class CrewOutcome:
    status: str  # completed | failed
    output: Any = None
    reason: str | None = None
    error: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


async def run_crew(crew: Any, inputs: dict[str, Any], notifier: StreamNotifier, flow_id: str,
                   phase: str | None = None) -> CrewOutcome:
    try:
        output = await asyncio.to_thread(crew.kickoff, inputs=inputs)
    except MeteringError as error:
        failure = {"reason": error.code, "message": str(error), "phase": phase, **error.details}
    except Exception as error:  # noqa: BLE001 - the flow records it; the runner stays up
        log.exception("crew of flow %s failed", flow_id)
        failure = {"reason": "crew_error", "message": f"{type(error).__name__}: {error}"[:1000], "phase": phase}
    else:
        return CrewOutcome("completed", output)
    await notifier.send_error_notification(flow_id, failure)
    await notifier.send_flow_update(flow_id, {"status": "failed", "reason": failure["reason"], "phase": phase})
    return CrewOutcome("failed", reason=failure["reason"], error=failure)
