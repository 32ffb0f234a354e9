"""``agentlibos image add|ls|show|rm``: the registry of images by name."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agentlibos.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    add_command,
    err,
    paths_of,
    print_json,
    readonly_store,
    sandbox_config,
)
from agentlibos.errors import ImageError, LimitExceeded, NotFound
from agentlibos.kernel.image import AgentImage, load_image
from agentlibos.registry import agent_ids, register_image, remove_image
from agentlibos.store import ImageRecord, open_store
from agentlibos.ui import format_table, joined_limits, limits_text, printable


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    im = sub.add_parser("image", help="register, list and show images",
                        description="Register, list and show images.",
                        epilog="example:\n  agentlibos image add ./my-image && agentlibos "
                               "image ls",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    imsub = im.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    ia = add_command(imsub, "add", help="register the image in DIR under its name",
                     func=cmd_image_add, example="""
        agentlibos image add ./my-image && agentlibos run summarize
    """)
    ia.add_argument("dir")
    add_command(imsub, "ls", help="list registered images", func=cmd_image_ls, example="""
        agentlibos image ls --json
    """)
    sh = add_command(imsub, "show", help="show a registered image", func=cmd_image_show,
                     example="""
        agentlibos image show summarize --json
    """)
    sh.add_argument("name")
    rm = add_command(imsub, "rm", help="remove a registered image (its registry copy too)",
                     func=cmd_image_rm, example="""
        agentlibos image rm summarize
    """)
    rm.add_argument("name")


def describe(rec: ImageRecord, img: AgentImage) -> dict[str, Any]:
    """What ``image add --json`` and ``image show --json`` print."""
    return {
        "name": rec.name,
        "version": rec.version,
        "description": rec.description,
        "path": rec.path,
        "registered_at": rec.registered_at,
        "entry": img.entry,
        "tools": {t.name: t.target for t in img.tools},
        "requested": [str(c) for c in img.requested],
        "limits": img.limits.to_json(),
    }


def cmd_image_add(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    # Who will read the image is the sandbox config's business: --config, else the
    # supervisor's own $AGENTLIBOS_HOME/config.toml.
    config = sandbox_config(ns)
    paths.ensure()
    store = open_store(paths.db)
    try:
        rec, img = register_image(store, paths.images, ns.dir, ids=agent_ids(config))
    except LimitExceeded as e:
        # Past an image's size, file count or depth: bad input, as an invalid image is.
        raise ImageError(e.message) from None
    except ImageError as e:
        if "compiler" not in e.details:
            raise
        # The compiler's message is many lines and meant to be read as such: the error
        # line, then each of its lines indented (and escaped: a tool is anyone's text).
        err(e.message.partition("\n")[0])
        for line in str(e.details["compiler"]).splitlines():
            print(f"  {printable(line)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        store.close()
    if ns.json:
        print_json(describe(rec, img))
    else:
        print(printable(f"registered {rec.name} {rec.version} ({len(img.tools)} tools, "
                        f"{len(img.requested)} capabilities requested) at {rec.path}"),
              flush=True)
    return EXIT_OK


def cmd_image_ls(ns: argparse.Namespace) -> int:
    store = readonly_store(paths_of(ns))
    try:
        recs = store.list_images() if store else []
    finally:
        if store is not None:
            store.close()
    if ns.json:
        print_json([r.__dict__ for r in recs])
    else:
        rows: list[tuple[str, ...]] = [("NAME", "VERSION", "DESCRIPTION", "PATH")]
        rows += [(r.name, r.version, r.description, r.path) for r in recs]
        print(format_table(rows), flush=True)
    return EXIT_OK


def cmd_image_show(ns: argparse.Namespace) -> int:
    store = readonly_store(paths_of(ns))
    try:
        rec = store.get_image(ns.name) if store else None
    finally:
        if store is not None:
            store.close()
    if rec is None:
        raise NotFound(f"no image named {ns.name!r} is registered (`agentlibos image ls`)")
    info = describe(rec, load_image(rec.path, agent_ids=None))  # shown, not run
    if ns.json:
        print_json(info)
        return EXIT_OK
    registered = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.registered_at))
    lines = [
        ("name", info["name"]), ("version", info["version"]),
        ("description", info["description"] or "-"), ("path", info["path"]),
        ("registered", registered), ("entry", info["entry"]),
        ("requests", " ".join(info["requested"]) or "-"),
        ("limits", joined_limits(limits_text(info["limits"]), (
            f"tokens={info['limits']['tokens']}" if info["limits"].get("tokens") else "-"))),
        ("tools", " ".join(f"{k}={v}" for k, v in info["tools"].items()) or "-"),
    ]
    for key, value in lines:
        print(f"{key + ':':<13}{printable(value)}")
    return EXIT_OK


def cmd_image_rm(ns: argparse.Namespace) -> int:
    paths = paths_of(ns)
    if not paths.db.exists():
        raise NotFound(f"no image named {ns.name!r} is registered (`agentlibos image ls`)")
    store = open_store(paths.db)
    try:
        rec = remove_image(store, paths.images, ns.name)
    finally:
        store.close()
    if ns.json:
        print_json({"name": rec.name, "version": rec.version, "path": rec.path,
                    "removed": True})
    else:
        print(printable(f"removed {rec.name} {rec.version} ({rec.path})"), flush=True)
    return EXIT_OK
