"""The built-in transport: the browser page, WebSocket v1 and the share tunnel, one port."""

from adapters.web.adapter import PLATFORM, WebAdapter

__all__ = ["PLATFORM", "WebAdapter"]
