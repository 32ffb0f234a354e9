"""A process's object namespace (``proc/<pid>``) is its memory: reachable from its own
tree only, whatever ``obj`` capability another tree's image asks for and the policy
allows (the built-in one allows ``obj:*:*``)."""

from __future__ import annotations

from agentlibos.kernel.policy import BUILTIN_POLICY
from agentlibos.supervisor import Supervisor
from tests.helpers import MakeImage, run_proc

PROBE = """
from agentlibos.errors import LibOSError
def main(ctx, args):
    out = {}
    for ns in args["namespaces"]:
        try:
            out[ns] = ctx.obj.get("secret", ns=ns)
        except LibOSError as e:
            out[ns] = [type(e).__name__, e.message]
        try:
            ctx.obj.put("secret", "overwritten", ns=ns)
            out[ns + " put"] = "written"
        except LibOSError as e:
            out[ns + " put"] = type(e).__name__
    return out
"""


def test_another_trees_process_namespace_is_invisible_under_the_built_in_policy(
    sup: Supervisor, make_image: MakeImage
) -> None:
    victim = make_image("victim", """
        def main(ctx, args):
            ctx.obj.put("secret", "VICTIM-SECRET")
            return ctx.proc.getpid()
    """)
    vpid = run_proc(sup, victim, policy=BUILTIN_POLICY).result
    thief = make_image("thief", PROBE, caps=["obj:rw:proc/*", "obj:rw:sel*",
                                             "obj:rw:shared/*"])
    rec = run_proc(sup, thief, {"namespaces": [f"proc/{vpid}", "proc/999", "self/x",
                                               "proc/x", "shared/ok"]},
                   policy=BUILTIN_POLICY)
    assert rec.exit_reason == "returned", rec.error
    out = rec.result
    assert out[f"proc/{vpid}"][0] == "NoSuchProcess", out
    assert f"no process {vpid} in this process tree" in out[f"proc/{vpid}"][1]
    assert out[f"proc/{vpid} put"] == "NoSuchProcess"
    assert out["proc/999"][0] == "NoSuchProcess" and out["proc/999 put"] == "NoSuchProcess"
    assert out["self/x"][0] == "InvalidArgument" and out["proc/x"][0] == "InvalidArgument"
    assert out["shared/ok put"] == "written"  # namespaces outside proc/ are shared
    assert sup.store.get_object(f"proc/{vpid}", "secret").value == "VICTIM-SECRET"


def test_a_child_reaches_its_parents_namespace_and_the_parent_its_childs(
    sup: Supervisor, make_image: MakeImage
) -> None:
    make_image("kid", """
        def main(ctx, args):
            ctx.obj.put("mine", "from the kid")
            return ctx.obj.get("plan", ns=f"proc/{args['parent']}")
    """, caps=["obj:read:proc/*"])
    parent = make_image("parent", """
        def main(ctx, args):
            ctx.obj.put("plan", "the parent's plan")
            kid = ctx.proc.spawn("kid", args={"parent": ctx.proc.getpid()})
            got = ctx.proc.wait(kid)["result"]
            return [got, ctx.obj.get("mine", ns=f"proc/{kid}")]
    """, caps=["obj:rw:proc/*", "proc:spawn:kid", "proc:wait:*"])
    rec = run_proc(sup, parent, policy=BUILTIN_POLICY)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == ["the parent's plan", "from the kid"]


def test_a_values_limit_is_its_utf8_size_not_its_escaped_size(
    sup: Supervisor, make_image: MakeImage
) -> None:
    img = make_image("intl", """
        from agentlibos.errors import LimitExceeded
        def main(ctx, args):
            cjk = "日本語" * 110_000            # 990,000 bytes of UTF-8
            emoji = "😀" * 250_000              # 1,000,000 bytes
            out = [ctx.obj.put("cjk", cjk)["size"], ctx.obj.put("emoji", emoji)["size"],
                   ctx.obj.get("cjk") == cjk, ctx.obj.get("emoji") == emoji]
            try:
                ctx.obj.put("over", "日" * 350_000)  # 1,050,000 bytes
            except LimitExceeded as e:
                out.append(e.message)
            return out
    """)
    rec = run_proc(sup, img, policy=BUILTIN_POLICY)
    assert rec.exit_reason == "returned", rec.error
    assert rec.result == [990_002, 1_000_002, True, True,
                          "obj.put: value of 1050002 bytes exceeds 1048576"]
