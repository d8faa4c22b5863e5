"""``satseg params`` (alias ``count-params``): compare skip gates' parameters, transferred bytes, FLOPs, memory."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from satseg.cli.options import LIST, out, parse_settings, parse_sizes, print_json, print_table, split_items

__all__ = ["params", "net_option"]


def net_option(**kwargs: Any) -> Any:
    """``--net-option KEY=VALUE``, shared by ``train`` and ``params``."""
    return typer.Option(
        "--net-option",
        metavar="KEY=VALUE",
        help="Backbone options, e.g. gate_levels=all (gate every skip, the paper; U-Net and V-Net gate the "
        "finest only by default), transfer=modulate." + LIST,
        **kwargs,
    )


def params(
    net: Annotated[
        list[str],
        typer.Option("--net", metavar="NETS", help="Backbones ({models}), or `all` for every one." + LIST),
    ] = ["all"],  # noqa: B006 - typer needs a list default; it is never mutated
    compare: Annotated[
        list[str],
        typer.Option("--compare", metavar="GATES", help="Skip gates to compare ({gates})." + LIST),
    ] = ["org,st,at,sat"],  # noqa: B006
    patch: Annotated[
        list[str] | None,
        typer.Option("--patch", metavar="SIZES", help="Patch sides, e.g. 96,96,96 (default 64² / 32³)." + LIST),
    ] = None,
    in_channels: Annotated[int, typer.Option("--in-channels")] = 1,
    out_channels: Annotated[int, typer.Option("--out-channels")] = 2,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count forward FLOPs.")] = True,
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="Measure peak forward memory.")] = True,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    net_options: Annotated[list[str] | None, net_option()] = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget",
            metavar="MIB",
            min=0.0,
            help="Instead: which width x gate, of those measured (models/frontier.json), gives the best Dice "
            "within this peak inference memory in MiB (CPU, ONNX Runtime, one 256³ volume or 1024² image; "
            "memory grows with the voxels).",
        ),
    ] = None,
    low_memory: Annotated[
        bool, typer.Option("--low-memory", help="With --budget: for `segment --low-memory` (its lower peaks).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare skip gates: parameters, channels and bytes the skips transfer, FLOPs, peak memory.

    The paper's Table 3 (every skip gated): `satseg params --net all --compare org,sat --net-option gate_levels=all`.
    What to train for a memory budget: `satseg params --budget 200`.
    """
    if budget is not None:
        from satseg.tables import budget_table
        from satseg.zoo import fit_budget, load_frontier

        rows = fit_budget(load_frontier(), budget, low_memory=low_memory)
        if as_json:
            print_json(rows)
            return
        print_table(budget_table(rows))
        for row in rows:
            if row["best"]:
                out.print(f"{row['dataset']}: satseg train {row['best']['train_options']}", highlight=False)
            if row["still_rising"]:
                rise = row["still_rising"]
                out.print(f"{row['dataset']}: provisional, still rising (+{rise:.3f} in training's second half)")
        return
    from satseg.nn.params import compare_models
    from satseg.tables import params_table

    rows = compare_models(
        None if split_items(net) == ["all"] else split_items(net), split_items(compare),
        patch=list(parse_sizes(patch)) if patch else None, in_channels=in_channels,
        out_channels=out_channels, flops=flops, memory=memory, device=device, net_options=parse_settings(net_options),
    )  # fmt: skip
    print_json(rows) if as_json else print_table(params_table(rows))
