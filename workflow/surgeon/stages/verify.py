"""Stage `verify`: the artifacts under results/ (or the given paths) against their manifests."""

from __future__ import annotations

from pathlib import Path

from ..errors import SurgeonError


def cmd_verify(args) -> int:
    from ..artifacts import rebuild_hint
    from ..verify import verify

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise SurgeonError(f"no such file or folder: {missing[0]}")
    findings = verify(args.paths)
    damaged = [f for f in findings if f.problem]
    for f in damaged:
        print(f"damaged: {f.path}: {f.problem}; {rebuild_hint(f.path, args.configfile)}")
    unhashed = sum(not f.hashed for f in findings)
    note = f" ({unhashed} record no hashes, not compared)" if unhashed else ""
    verdict = f"{len(damaged)} damaged" if damaged else "all match their manifests"
    print(f"verify: {len(findings)} artifacts checked{note}, {verdict}")
    return 1 if damaged else 0


def add_parsers(sub) -> None:
    s = sub.add_parser("verify", help="recompute the sha256 of every artifact's manifest; "
                                      "exit 1 naming each damaged one and its rebuild")
    s.add_argument("paths", nargs="*", default=["results"],
                   help="folders to walk or artifacts to check (default: results)")
    s.add_argument("--configfile", default="",
                   help="the run's --configfile, to put into the printed snakemake commands")
    s.set_defaults(func=cmd_verify)
