"""The field engineer's serial console: a small command line on the box's serial port.

See docs/console.md. ``SerialConsole(agent, settings)`` is started by ``Agent.start``
when ``[console] device`` is set and closed by ``Agent.close``.
"""

from agent.field.console.console import PROMPT, SerialConsole, build_table, start_console

__all__ = ["PROMPT", "SerialConsole", "build_table", "start_console"]
