"""The JUnit XML report: one <testsuite> per deployment, one <testcase> per hook run.

Follows the common JUnit schema that CI systems read (Jenkins' junit-10.xsd shape): <testsuites>
holding <testsuite name tests failures errors skipped time timestamp hostname> with <properties>,
<testcase classname name time> (classname = the lifecycle event, name = the script location) with an
optional <failure message type> and the hook's output as <system-out>. A hook failure that
--ignore-application-stop-failures ignored is a <skipped message> (type-less), not a failure: the
deployment went on; its message says it failed and was ignored. A deployment that failed
where no hook ran (DownloadBundle, Install) gets one test case for that event, so the failure shows.
A rehearsal's ``traffic`` figures are test cases too (classname ``traffic``, name ``INSTANCE EVENT``),
failed when requests failed in that window.
Pure: summaries in, XML text out.
"""
from __future__ import annotations

import datetime
import re
import socket
import xml.etree.ElementTree as ET

from agent.reports.model import DeploymentSummary, failure_outside_hooks

# XML 1.0 forbids most control characters even escaped; hooks print anything
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: object) -> str:
    return _NOT_XML.sub("\ufffd", "" if text is None else str(text))


def _secs(value: float | None) -> str:
    return f"{max(value or 0.0, 0.0):.3f}"


def _timestamp(epoch: float | None) -> str:
    when = datetime.datetime.fromtimestamp(epoch or 0, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S")   # xs:dateTime without zone, as the schema wants


def _testcase(parent: ET.Element, classname: str | None, name: str | None, duration: float | None) -> ET.Element:
    return ET.SubElement(parent, "testcase", {"classname": _clean(classname), "name": _clean(name),
                                              "time": _secs(duration)})


def render(deployments: list[DeploymentSummary], hostname: str | None = None) -> str:
    host = hostname or socket.gethostname()
    root = ET.Element("testsuites", {"name": "cdsim"})
    totals = {"tests": 0, "failures": 0, "errors": 0, "time": 0.0}
    for i, dep in enumerate(deployments):
        suite = ET.SubElement(root, "testsuite", {
            "name": _clean(f"deployment {dep['deployment_id']}"), "id": str(i), "package": "cdsim",
            "hostname": _clean(host), "timestamp": _timestamp(dep["started"])})
        props = ET.SubElement(suite, "properties")
        for key in ("deployment_id", "status", "group_id", "group_name", "application", "deployment_dir",
                    "failed_event", "reference"):
            if dep.get(key) is not None:
                ET.SubElement(props, "property", {"name": key, "value": _clean(dep[key])})
        tests = failures = skipped = 0
        for hook in dep["hooks"]:
            case = _testcase(suite, hook["event"], hook["location"], hook.get("duration"))
            tests += 1
            if hook.get("status") != "Succeeded" and hook.get("ignored"):
                skipped += 1
                message = hook.get("message") or "hook failed"
                ET.SubElement(case, "skipped", {"message": _clean(
                    f"failed and ignored (--ignore-application-stop-failures): {message}")})
            elif hook.get("status") != "Succeeded":
                failures += 1
                message = hook.get("message") or f"hook {hook.get('status', 'Unfinished').lower()}"
                kind = "hook-timed-out" if hook.get("error_code") == 3 else "hook-failed"
                fail = ET.SubElement(case, "failure", {"message": _clean(message), "type": kind})
                fail.text = _clean("\n".join([message, *hook.get("notes", [])]))
            out = ET.SubElement(case, "system-out")
            origin = (f"[cdsim] script of the previous revision: deployment {hook.get('revision_deployment_id')}, "
                      f"archive {hook.get('revision_archive')}, appspec {hook.get('revision_appspec')}\n"
                      if hook.get("previous_revision") else "")
            out.text = _clean(origin + (hook.get("output") or ""))
        outside = failure_outside_hooks(dep)
        if outside is not None:
            case = _testcase(suite, outside["event"], outside["event"], outside["duration"])
            tests += 1
            failures += 1
            fail = ET.SubElement(case, "failure", {"message": _clean(outside["error"]),
                                                   "type": _clean(outside["reference"] or "deployment-failed")})
            fail.text = _clean(outside["error"])
        for w in dep["traffic"]:
            if w["instance"] == "*":
                continue
            case = _testcase(suite, "traffic", f"{w['instance']} {w['event']}", None)
            tests += 1
            if w["failed"]:
                failures += 1
                why = ", ".join(f"{k}: {v}" for k, v in sorted(w["errors"].items()))
                message = f"{w['failed']} of {w['sent']} requests failed ({why})"
                ET.SubElement(case, "failure", {"message": _clean(message), "type": "requests-failed"}).text = \
                    _clean(message)
        ET.SubElement(suite, "system-out").text = _clean(
            "".join(f"{n['text']}\n" for n in dep["notices"]))
        ET.SubElement(suite, "system-err")
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(skipped))
        suite.set("time", _secs(dep.get("duration")))
        totals["tests"] += tests
        totals["failures"] += failures
        totals["time"] += dep.get("duration") or 0.0
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("time", _secs(totals["time"]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
