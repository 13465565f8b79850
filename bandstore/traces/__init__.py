"""Access logs: the Trace, readers of public log formats, the traffic recorder, and synthetic
generators."""

from bandstore.traces.trace import Trace

__all__ = ["Trace"]
