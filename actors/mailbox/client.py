"""Caller side of the Mailbox shards."""
from __future__ import annotations

from typing import Any

from actors.mailbox.actor import PUBLIC_METHODS, Mailbox
from actors.mailbox.core import KIND, MailboxError, MailboxOptions
from actors.substrate.shard_client import ShardClient


class MailboxClient(ShardClient):
    error_class = MailboxError
    unavailable_code = "mailbox_unavailable"
    # Every operation's arguments and answers are plain JSON (a message's content passed the strict
    # JSON boundary), so all go over the shard's direct channel: a Ray call's round trip was what
    # kept the shard's group commit idle between one batch of sends and acks and the next.
    channel_methods = PUBLIC_METHODS
    calls_in_flight = 2

    def __init__(self, database_url: str, shards: int, options: MailboxOptions = MailboxOptions(), *,
                 kind: str = KIND, hub: dict[str, Any] | None = None) -> None:
        super().__init__(Mailbox, kind, shards, database_url, options, hub)
