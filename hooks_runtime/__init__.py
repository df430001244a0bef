"""Running hook processes: spawn, runas, timeouts, process-tree kill, output capture (spec §7).

The one place in cdsim that spawns hook scripts. Public surface below; the modules behind it are
private: ``runner`` (the per-script sequence and its result), ``process`` (command line, spawn under
a per-hook supervisor, the process tree, signals), ``cgroup`` (a cgroup per hook where the host
allows one), ``output`` (scripts.log, deployments log, diagnostic tail), ``diagnostics`` (reading
/proc). Imports nothing from ``agent``.
"""
from hooks_runtime.diagnostics import ProcInfo
from hooks_runtime.output import HookLog
from hooks_runtime.runner import HookResult, Script, ScriptErrorCode, run_script

__all__ = ["HookLog", "HookResult", "ProcInfo", "Script", "ScriptErrorCode", "run_script"]
