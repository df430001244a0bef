"""The layering rules that are not import rules, checked on the source and on real processes.

The import rules the module docstrings state are import-linter contracts (``[tool.importlinter]`` in
pyproject.toml, run by scripts/check). What an import contract can't say is here: which modules spawn
processes (hooks_runtime is the one place that runs hook scripts), that pure modules do no I/O through
builtins, that the CLI's parsers load nothing heavy, that the instance launcher starts with next to
nothing loaded, and that no module takes part in an import cycle (including a package and its own
modules, which import-linter's sibling check does not see).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.lib import REPO

PACKAGES = ("agent", "hooks_runtime")

# Every module outside hooks_runtime.process that starts a process, and why. Hook scripts are started
# by hooks_runtime.process only; anything new here is a review question (does it run a hook? then it
# belongs in hooks_runtime), so the list must match the source exactly.
SPAWNERS = {
    "agent.commands.doctor": "short-lived probes (unshare, mount, su USER -c true, cdsim doctor --host inside)",
    "agent.commands.watch": "each run is `cdsim deploy` in a subprocess",
    "agent.install": "setfacl, semanage and restorecon for the appspec's permissions (argv lists)",
    "agent.instance": "exec_in runs a command through the launcher; destroy's remover in a user namespace",
    "agent.instance.enter": "the launcher forks and executes the command inside the instance",
    "agent.instance.idmap": "newuidmap/newgidmap from a forked helper outside the new user namespace",
    "agent.instance.image": "unpacks layers in a child that is root of a user namespace with the caller's maps",
    "agent.instance.keeper": "the keeper process and the instance's init",
    "agent.instance.loadbalancer": "the state's load balancer daemon (detached) and its helpers in instances' networks",
    "agent.instance.localaws": "the state's moto server (detached), started when an instance first calls AWS",
    "agent.instance.services": "the instance's services daemon (detached) and its helper joining the namespaces",
    "agent.instance.systemctl_manager": "the unit manager (forked by the instance's init) and the units' processes",
    "agent.pytest_plugin": "`cdsim deploy` in a subprocess, and exec() inside the deployment's place",
    "agent.service.agent_loop": "the runner inside the instance (or here, for a host agent)",
    "agent.service.fetch": "git archive for GitHub revisions",
    "agent.workers": "forked copies of this process sharing the file copies of a bundle or an Install",
    "hooks_runtime.environment": "bash -a sourcing /etc/profile, to read the environment hooks get",
    "hooks_runtime.process": "the hook scripts themselves, under a per-hook supervisor",
}
_SPAWN_FUNCTIONS = {
    "subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
    "os": {"fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp", "execv", "execve", "execvp",
           "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
           "spawnl", "spawnle", "spawnlp", "spawnlpe"},
    "pty": {"spawn", "fork"},
    "asyncio": {"create_subprocess_exec", "create_subprocess_shell"},
}
_SPAWN_MODULES = {"multiprocessing", "concurrent.futures.process"}

# Pure modules: values in, values out (the docstrings say "Pure: no I/O"); import-linter keeps I/O
# modules out of their imports, this keeps the I/O builtins out of their code.
PURE = ("agent.appspec", "agent.appspec_platforms",
        "agent.lifecycle", "agent.permissions", "agent.revision", "agent.errors", "agent.ruby",
        "agent.state",
        "agent.reports.model", "agent.reports.html", "agent.reports.junit", "agent.reports.json_report",
        "agent.reports.github", "agent.reports.markdown", "agent.reports.sarif", "agent.instance.systemctl_units",
        "agent.service.bluegreen")
_IO_BUILTINS = {"open", "print", "input", "breakpoint", "exec", "eval", "__import__"}

# What no command's parser may load: `cdsim --help` and every command's start imports the parser only
HEAVY = ("yaml", "psutil", "watchdog", "botocore", "moto", "werkzeug", "flask", "sqlite3", "hooks_runtime",
         "agent.sequencer", "agent.lint", "agent.service.server", "agent.service.engine", "agent.instance.keeper")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _spawns(tree: ast.AST) -> list[str]:
    """``module.function`` of every process-starting call or import in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.attr in _SPAWN_FUNCTIONS.get(node.value.id, ()):
            out.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in _SPAWN_FUNCTIONS:
            out += [f"{node.module}.{a.name}" for a in node.names if a.name in _SPAWN_FUNCTIONS[node.module]]
        elif isinstance(node, ast.ImportFrom) and node.module in _SPAWN_MODULES:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name in _SPAWN_MODULES]
    return out


def test_only_the_known_modules_start_processes_and_only_hooks_runtime_runs_hooks():
    """A module that starts a process must be in SPAWNERS with its reason; the deployment engine (deploy,
    bundle, plan, lint, the service's runner ...) starts none: hook scripts go through hooks_runtime."""
    found = {name: calls for name, path in _modules().items()
             if (calls := _spawns(ast.parse(path.read_text(encoding="utf-8"), str(path))))}
    assert sorted(found) == sorted(SPAWNERS), (
        "modules that start processes changed: "
        f"new {sorted(set(found) - set(SPAWNERS))}, gone {sorted(set(SPAWNERS) - set(found))}; "
        "hook scripts are started by hooks_runtime only (see its docstring)")
    for engine in ("agent.sequencer", "agent.bundle", "agent.plan", "agent.lint", "agent.service.runner",
                   "agent.commands.deploy", "agent.commands.local", "hooks_runtime.runner",
                   "hooks_runtime.cgroup", "hooks_runtime.diagnostics", "hooks_runtime.output"):
        assert engine not in found


def test_the_spawn_scan_sees_every_form_of_starting_a_process():
    """The scan itself: a module-qualified call, a from-import and multiprocessing are all seen."""
    source = ("import subprocess, os\nfrom subprocess import Popen\nimport multiprocessing\n"
              "def f():\n    subprocess.check_output(['x'])\n    os.execvp('x', ['x'])\n    os.getpid()\n")
    assert sorted(_spawns(ast.parse(source))) == ["multiprocessing", "os.execvp", "subprocess.Popen",
                                                  "subprocess.check_output"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_call_no_io_builtin(module):
    """Pure modules (appspec model, lifecycle ordering, permission rules, revisions, errors, report
    renderers) read no file, print nothing and load nothing at run time."""
    path = _modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    called = sorted({n.func.id for n in ast.walk(tree)
                     if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in _IO_BUILTINS})
    assert called == [], f"{module} calls {called}: pure modules do no I/O (the caller reads and writes)"


def test_no_module_takes_part_in_an_import_cycle():
    """Every import (lazy ones included; not those for the type checker only) between the modules of
    agent and hooks_runtime forms no cycle, a package's __init__ and its own modules included."""
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    cycles = [c for c in _strongly_connected(modules, edges) if len(c) > 1]
    assert cycles == []


def _strongly_connected(nodes: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": []}
    assert [c for c in _strongly_connected(["a", "b", "c", "d"], edges) if len(c) > 1] == [["a", "b", "c"]]


def _loaded_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=True)
    return set(done.stdout.split())


def test_no_command_parser_loads_anything_heavy():
    """The CLI imports a command's module to build its parser (and `cdsim --help` a placeholder for
    each): YAML, psutil, watchdog, botocore, moto, the engine and the server load only when it runs."""
    from agent.cli import COMMANDS

    for command in ["", *COMMANDS]:
        loaded = _loaded_after(f"import agent.cli\nagent.cli.build_parser({command!r})")
        heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)
        assert heavy == [], f"building the parser of {command or '--help'!r} loads {heavy}"


def test_the_instance_launcher_starts_with_nothing_of_cdsim_and_no_typing():
    """The launcher (agent.instance.enter, run as a plain script for every command entered into an
    instance) loads only its two sibling modules and the standard library's small modules: no agent
    package, no typing (its types are for the type checker only), no json or subprocess."""
    enter = REPO / "agent" / "instance" / "enter.py"
    done = subprocess.run([sys.executable, "-E", "-s", "-S", "-X", "importtime", str(enter), "malformed"],
                          capture_output=True, text=True, cwd="/", timeout=60, check=False)
    assert done.returncode == 7, done.stderr   # STATUS_LAUNCHER, after a usage line
    imported = {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.*)$", done.stderr, re.M)}
    assert {"confine", "namespaces"} <= imported
    unwanted = sorted(m for m in imported if m.split(".")[0] in ("agent", "typing", "json", "subprocess",
                                                                  "threading", "yaml", "psutil", "hooks_runtime"))
    assert unwanted == []


def test_every_package_module_is_scanned():
    """The scans above read every module (a new file can't slip past them)."""
    names = _modules()
    assert "agent.instance.enter" in names and "hooks_runtime.process" in names
    assert len(names) == sum(1 for p in PACKAGES for _ in (REPO / p).rglob("*.py"))
    assert all(path.is_file() and os.access(path, os.R_OK) for path in names.values())


def test_cdsim_local_of_a_small_bundle_loads_no_typing_and_no_report_model(tmp_path):
    """Start-up is most of a small deployment's time (issue 17): `cdsim local` of an appspec-only bundle,
    with no --report, deploys without importing typing, the report model, argparse, threading, signal,
    pickle, psutil, watchdog or the service's libraries; and it did deploy (exit 0, the agent's success
    line)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "appspec.yml").write_text("version: 0.0\nos: linux\n")
    conf = tmp_path / "agent.yml"
    conf.write_text(f":root_dir: {tmp_path}/root\n:log_dir: {tmp_path}/log\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "agent", "local", "--bundle-location",
                           str(bundle), "--type", "directory", "--agent-configuration-file", str(conf)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 0 and "Local deployment successful" in done.stdout, done.stdout + done.stderr
    imported = {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|(.*)$", done.stderr, re.M)}
    assert "agent.sequencer" in imported
    # (contextlib is not in the list: `python -m` imports it for runpy; the installed `cdsim` does not)
    unwanted = sorted(m for m in imported if m in ("typing", "agent.reports.model", "subprocess", "argparse",
                                                   "threading", "signal", "pickle")
                      or m.split(".")[0] in ("psutil", "watchdog", "botocore", "moto", "werkzeug", "sqlite3"))
    assert unwanted == []
