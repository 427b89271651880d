"""Running a crew for a flow: in a worker thread, with metering failures turned into a clean end.

A crew that stops because the ledger refused a call (BudgetExceeded) or could not meter it is not
an error of the crew: the flow ends as failed with that reason. `announce_failure` then tells the
tenant's stream (an `error_notification` and a final `flow_update`); it is separate so that the
flow runner stores the failure first and only then announces it. A crew stopped because its flow
was cancelled ends as `cancelled`, without an error (the canceller has already said so).

`phase` is the phase to blame, or a callable giving the phase running when the crew stopped.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from crews.metering import MeteringError

if TYPE_CHECKING:
    from actors.event_hub.notifications import StreamNotifier

log = logging.getLogger("raytenant.crews")


class PhaseFailed(Exception):
    """A phase found that the flow cannot go on (data validation failed): raised from the phase's
    task callback, it stops the crew and fails the flow with `code`."""

    def __init__(self, message: str, code: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.details = code, details


@dataclass
class CrewOutcome:
    status: str  # completed | failed | cancelled
    output: Any = None
    reason: str | None = None
    error: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


async def run_crew(crew: Any, inputs: dict[str, Any], flow_id: str,
                   phase: str | Callable[[], str | None] | None = None, *, executor: Any = None) -> CrewOutcome:
    loop = asyncio.get_running_loop()
    try:
        output = await loop.run_in_executor(executor, lambda: crew.kickoff(inputs=inputs))
    except MeteringError as error:
        if error.code == "cancelled":
            return CrewOutcome("cancelled", reason="cancelled")
        failure = {"reason": error.code, "message": str(error), **error.details}
    except PhaseFailed as error:
        failure = {"reason": error.code, "message": str(error), **error.details}
    except Exception as error:  # noqa: BLE001 - the flow records it; the runner stays up
        log.exception("crew of flow %s failed", flow_id)
        failure = {"reason": "crew_error", "message": f"{type(error).__name__}: {error}"[:1000]}
    else:
        return CrewOutcome("completed", output)
    failure["phase"] = phase() if callable(phase) else phase
    return CrewOutcome("failed", reason=failure["reason"], error=failure)


async def announce_failure(notifier: StreamNotifier, flow_id: str, failure: dict[str, Any]) -> None:
    """Tell the tenant's stream that the flow failed: its error, then its final status."""
    await notifier.send_error_notification(flow_id, failure)
    await notifier.send_flow_update(flow_id, {"status": "failed", "reason": failure["reason"],
                                              "phase": failure.get("phase")})
