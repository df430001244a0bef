"""Deployments of what cdsim validates but does not deploy: an Amazon ECS or AWS Lambda appspec in a
directory bundle is refused by `cdsim deploy` and `cdsim local` before anything runs (UnsupportedPlatform,
exit status 8). An archive's appspec is read only once unpacked: agent.appspec's parser refuses it there.

Not a command: a helper of those two. Reads the bundle's appspec file; imports only agent.appspec (and,
through it, agent.errors), so `cdsim local` stays quick to start. Starts nothing.
"""
from __future__ import annotations

import os


def refuse_platform_appspec(bundle: str, btype: str, appspec_filename: str | None) -> None:
    """A directory bundle whose appspec is for Amazon ECS or AWS Lambda: UnsupportedPlatform (exit 8)
    before anything runs. (An archive's is refused by the parser, at its first event that reads it.)"""
    from agent import appspec as A

    if btype != "directory":
        return
    for name in A.install_appspec_candidates(appspec_filename):
        path = os.path.join(bundle, name)
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    data = f.read(A.MAX_APPSPEC_BYTES + 1)
            except OSError:
                return   # the deployment says why it cannot read it
            A.refuse_platform_appspec(data, path)
            return
