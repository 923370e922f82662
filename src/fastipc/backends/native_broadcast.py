"""Placeholder for the native broadcast backend (written on branch bcast-c, which replaces this file).

Until that branch is merged, the native backend has no broadcast ring: every
factory raises NotImplementedError saying so (nothing silently falls back to
the python backend).
"""

from __future__ import annotations

from typing import NoReturn

from .._contract_broadcast import BroadcastBase, SubscriberBase

__all__ = ["NativeBroadcast", "NativeSubscriber"]

_WHY = (
    "the native broadcast ring is not built in this copy of fastipc yet; "
    "use FASTIPC_BACKEND=python for Broadcast"
)


class NativeBroadcast(BroadcastBase):
    """Placeholder: raises NotImplementedError from every factory."""

    @classmethod
    def _create(
        cls, name: str, capacity: int, subscribers: int, policy: str, mode: int
    ) -> NoReturn:
        raise NotImplementedError(_WHY)

    @classmethod
    def _open(cls, name: str, owners: frozenset[int] | None = None) -> NoReturn:
        raise NotImplementedError(_WHY)


class NativeSubscriber(SubscriberBase):
    """Placeholder: raises NotImplementedError from every factory."""

    @classmethod
    def _subscribe(cls, name: str, owners: frozenset[int] | None = None) -> NoReturn:
        raise NotImplementedError(_WHY)
