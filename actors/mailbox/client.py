"""Caller side of the Mailbox shards."""
from __future__ import annotations

from typing import Any

from actors.mailbox.actor import Mailbox
from actors.mailbox.core import KIND, MailboxError, MailboxOptions
from actors.substrate.shard_client import ShardClient


class MailboxClient(ShardClient):
    error_class = MailboxError
    unavailable_code = "mailbox_unavailable"

    def __init__(self, database_url: str, shards: int, options: MailboxOptions = MailboxOptions(), *,
                 kind: str = KIND, hub: dict[str, Any] | None = None) -> None:
        super().__init__(Mailbox, kind, shards, database_url, options, hub)
