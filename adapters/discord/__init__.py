"""The Discord bridge (discord.py): `DiscordAdapter` translates, `DiscordSink` shows output."""

from adapters.discord.adapter import DiscordAdapter, diagnose
from adapters.discord.sink import PLATFORM, DiscordSink, strip_mention

__all__ = ["PLATFORM", "DiscordAdapter", "DiscordSink", "diagnose", "strip_mention"]
