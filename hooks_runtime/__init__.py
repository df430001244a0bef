"""Running hook processes: spawn, runas, timeouts, process-tree kill, output capture.

Imports nothing from ``agent``.
"""
