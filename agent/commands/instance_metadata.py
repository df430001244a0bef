"""`cdsim instance metadata-options NAME`: an instance's metadata options, user data and tags.

Named as `aws ec2 modify-instance-metadata-options` names them (``--http-tokens required|optional``,
``--http-endpoint enabled|disabled``, ``--instance-metadata-tags enabled|disabled``); prints the
options as that command does (JSON). Thin: agent.instance.imds does the work.
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.instance.store import Instance


def register(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's own generic
    m = actions.add_parser(
        "metadata-options",
        help="show or change the instance's metadata options (IMDS: 169.254.169.254 inside), user data and tags")
    m.add_argument("name")
    m.add_argument("--http-tokens", choices=("required", "optional"),
                   help="required: IMDSv2 session tokens only (default); optional: IMDSv1 requests answered too")
    m.add_argument("--http-endpoint", choices=("enabled", "disabled"), help="disabled: every request gets 403")
    m.add_argument("--instance-metadata-tags", choices=("enabled", "disabled"),
                   help="the instance's tags under meta-data/tags/instance")
    m.add_argument("--user-data", metavar="FILE", help="the instance's user data (latest/user-data), from FILE")
    m.add_argument("--tag", action="append", metavar="KEY=VALUE", help="set the instance's tags (repeatable)")


def run(args: argparse.Namespace, instance: Instance) -> int:
    from agent.instance import imds

    user_data = None
    if args.user_data is not None:
        try:
            with open(args.user_data, "rb") as f:
                user_data = f.read()
        except OSError as e:
            raise UsageError(f"{args.user_data}: cannot read the user data: {e.strerror}",
                             file=args.user_data, reference="imds-user-data") from e
    tags = None
    if args.tag:
        tags = {}
        for text in args.tag:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise UsageError(f"--tag {text!r} is not KEY=VALUE", reference="imds-tag-invalid")
            tags[key] = value
    identity = imds.modify_options(instance, http_tokens=args.http_tokens, http_endpoint=args.http_endpoint,
                                   instance_metadata_tags=args.instance_metadata_tags, user_data=user_data,
                                   tags=tags)
    print(json.dumps({"InstanceId": identity["instance_id"], "InstanceMetadataOptions": {
        "State": "applied", "HttpTokens": identity["options"]["HttpTokens"], "HttpPutResponseHopLimit": 2,
        "HttpEndpoint": identity["options"]["HttpEndpoint"], "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": identity["options"]["InstanceMetadataTags"]}}, indent=4))
    return 0
