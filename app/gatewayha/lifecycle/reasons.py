"""Why a cluster stops: the reason stored with the stop (``clusters.reason``: logs,
``gatewayha-admin clusters list``) and whether the stop is a failure, which makes its stop
target FAILED. Every stop the gateway makes is one of these."""

from __future__ import annotations

from dataclasses import dataclass

from gatewayha.lifecycle.status import ClusterStatus


@dataclass(frozen=True)
class StopReason:
    text: str
    failed: bool = False

    @property
    def target(self) -> ClusterStatus:
        """What the stop ends in."""
        return ClusterStatus.FAILED if self.failed else ClusterStatus.STOPPED

    def __str__(self) -> str:
        return self.text


BY_SCHEDULER = StopReason("Shut down by its scheduler (idle timeout or request)")
BY_ADMINISTRATOR = StopReason("Stopped by an administrator")


def gateway_shut_down(text: str) -> StopReason:
    """The whole gateway was stopped, its clusters with it (``gatewayha-admin clusters end-all``)."""
    return StopReason(text)


def by_owner(user: str) -> StopReason:
    return StopReason(f"Shut down by user {user}")


def owner_removed(user: str) -> StopReason:
    return StopReason(f"owner {user} removed by an administrator")


def max_lifetime(seconds: float) -> StopReason:
    return StopReason(f"reached the maximum lifetime of {seconds:g} s")


def no_heartbeat(seconds: float) -> StopReason:
    return StopReason(f"no heartbeat for {seconds:g} s", failed=True)


def did_not_start(seconds: float, waiting: str | None = None) -> StopReason:
    """``waiting``: what the backend last said it waits for (a batch job's pending reason)."""
    why = f" ({waiting})" if waiting else ""
    return StopReason(f"did not start within {seconds:g} s{why}", failed=True)


def never_placed(seconds: float) -> StopReason:
    return StopReason(f"no node could start it within {seconds:g} s", failed=True)


def node_lost(node: str, seconds: float) -> StopReason:
    return StopReason(f"node {node} lost (unseen for {seconds:g} s)", failed=True)


def scheduler_gone(why: str | None) -> StopReason:
    """A backend's batched check found the scheduler's process gone (its words for why)."""
    return StopReason(f"scheduler: {why or 'not running'}", failed=True)
