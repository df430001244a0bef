"""`cdsim image`: list and remove the images unpacked for instances (agent.instance.image's cache).

Thin: parses arguments, calls agent.instance.image, prints. Images get into the cache through
`cdsim instance create NAME --image REF` (and --image on deploy, watch and fleet up).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

SUMMARY = "list or remove the images unpacked for instances (cdsim instance create NAME --image REF)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image", help=SUMMARY, description=SUMMARY)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="the cached images: id, architecture, size, instances made from it, "
                                              "where it came from")
    listing.add_argument("--format", choices=("text", "json"), default="text")
    rm = actions.add_parser("rm", help="remove a cached image no instance is made from")
    rm.add_argument("image", nargs="+", help="image id (or a unique prefix of it), or the path it was read from")
    p.set_defaults(func=run, parser=p)


def _users(state: str | None = None) -> dict[str, list[str]]:
    """Image id -> the instances whose lower layer it is."""
    from agent.instance import store
    users: dict[str, list[str]] = {}
    for name in store.names(state):
        inst = store.load(name, state)
        made = store.read_meta(inst.path).get("image") if inst else None
        if made and made["id"]:
            users.setdefault(made["id"], []).append(name)
    return users


def run(args: argparse.Namespace) -> int:
    from agent.instance import image

    action = getattr(args, "action", None)
    if action is None:
        args.parser.print_help()
        return 2
    users = _users()
    if action == "list":
        rows = image.list_images()
        if args.format == "json":
            json.dump([{**m, "instances": users.get(m["id"], [])} for m in rows], sys.stdout, indent=2)
            print()
            return 0
        if not rows:
            print("no images (cdsim instance create NAME --image REF unpacks one)")
            return 0
        print(f"{'ID':14} {'ARCH':6} {'SIZE':>9} {'UNPACKED':17} {'INSTANCES':16} SOURCE")
        for m in rows:
            size = image.tree_size(image.rootfs_of(m["id"]))
            when = datetime.datetime.fromtimestamp(m["created"]).strftime("%Y-%m-%d %H:%M")
            print(f"{m['id'][:12]:14} {m['architecture']:6} {size / 1e6:8.1f}M {when:17} "
                  f"{','.join(users.get(m['id'], [])) or '-':16} {m['ref']}")
        return 0
    for ref in args.image:
        found = image.find(ref)
        image.remove(found, users.get(found["id"], []))
        print(f"removed image {found['id'][:12]} ({found['ref']})")
    return 0
