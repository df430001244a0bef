"""Merge the shared conformance allowances with cdsim's extra ones; print YAML to stdout.

Usage: python conformance/merge_allowances.py SHARED.yaml EXTRA.yaml > merged.yaml
Per case and step, `skip` and `mention` lists are united; other keys of the extra file win.
"""
import sys

import yaml


def merge(shared: dict, extra: dict) -> dict:
    out = {case: {step: dict(v) for step, v in steps.items()} for case, steps in (shared or {}).items()}
    for case, steps in (extra or {}).items():
        for step, v in steps.items():
            cur = out.setdefault(case, {}).setdefault(step, {})
            for key, value in v.items():
                if key in ("skip", "mention"):
                    cur[key] = sorted(set(cur.get(key, [])) | set(value))
                else:
                    cur[key] = value
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as a, open(sys.argv[2]) as b:
        print(yaml.safe_dump(merge(yaml.safe_load(a), yaml.safe_load(b)), sort_keys=True))
