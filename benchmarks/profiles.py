"""Benchmark profiles: datasets, network sizes and training budgets of the SAT paper reproduction.

A profile fixes everything a result depends on, so a table can always be traced back to its settings:
the preprocessing of each dataset, the test split, the width of every network, the training budget
(identical for every skip gate of a network) and the seeds.

Paper: Taghanaki et al., "Select, Attend, and Transfer: Light, Learnable Skip Connections", arXiv:1804.05181.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "FRONTIER_SKIPS",
    "FRONTIER_WIDTHS",
    "frontier_nets",
    "DatasetSpec",
    "NetSpec",
    "Profile",
    "PROFILES",
    "SKIPS",
    "TABLE3_NETS",
    "Variant",
    "VARIANTS",
]

SKIPS = ("org", "at", "st", "sat")
"""Skip gates of Table 1, in the paper's row order."""


@dataclass(frozen=True)
class Variant:
    """A named skip configuration: a gate, its options and any training settings it needs."""

    name: str
    skip: str
    gate: dict[str, Any] = field(default_factory=dict)  # satseg.nn.gates.build_gate options
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (select_l1, …)
    model: dict[str, Any] = field(default_factory=dict)  # backbone options (U-Net's transfer)
    about: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("org", "org", about="plain skip: every channel"),
        Variant("at", "at", about="attend only: one sigmoid map of all channels"),
        Variant("st", "st", about="select only: every channel times trelu(W)"),
        Variant("sat", "sat", about="the paper's gate: W = 0.5, one map, no BN on K"),
        Variant("sat-bn", "sat", {"attend_norm": True}, about="sat with BN between K and the sigmoid"),
        Variant("sat-k2", "sat", {"attend_channels": 2}, about="sat transferring 2 maps"),
        Variant("sat-k2-bn", "sat", {"attend_channels": 2, "attend_norm": True}, about="2 maps, BN"),
        Variant("sat-k4-bn", "sat", {"attend_channels": 4, "attend_norm": True}, about="4 maps, BN"),
        Variant("sat-mod", "sat", model={"transfer": "modulate"}, about="U-Net: the map also scales the decoder"),
        Variant(
            "sat-k2-bn-mod",
            "sat",
            {"attend_channels": 2, "attend_norm": True},
            model={"transfer": "modulate"},
            about="U-Net: 2 maps, BN, maps also scale the decoder",
        ),
        Variant(
            "st-l1",
            "st",
            train={"select_l1": 2e-3, "select_lr_scale": 10.0},
            about="select only, L1 2e-3 on trelu(W) (st's task gradients on W are 1e-3 to 2e-2), 10x LR on W: "
            "switched-off channels are pruned from the skip",
        ),
        Variant(
            "sat-k2-bn-lin",
            "sat",
            {"attend_channels": 2, "attend_norm": True, "attend_activation": "identity"},
            about="2 maps, BN, no sigmoid: a linear projection",
        ),
        Variant("sat-fine1", "sat", model={"gate_levels": 1}, about="sat on the finest skip, deeper plain (default)"),
        Variant("sat-fine2", "sat", model={"gate_levels": 2}, about="sat on the 2 finest skips, deeper ones plain"),
        Variant("sat-keras", "sat", {"select_init": "keras-glorot"}, about="W from Keras 2 Glorot uniform"),
        Variant(
            "sat-l1",
            "sat",
            train={"select_l1": 3e-4, "select_lr_scale": 10.0},
            about="W = 0.5, L1 3e-4 on trelu(W) (task gradients on W are 1e-4 to 3e-3 at init), 10x LR on W",
        ),
    )
}
"""Skip variants a suite can train (``--skips``); the four paper gates keep their Table 1 names."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: where it comes from and how it is preprocessed (``satseg preprocess`` options)."""

    name: str
    source: str  # folder under the data root (``../shared/data`` by default)
    spatial_dims: int
    size: tuple[int, int] | None = None  # 2D resize
    folds: int = 5
    split_seed: int = 0
    test_fold: int = 0
    max_test_cases: int | None = None  # None: every case of the test fold


@dataclass(frozen=True)
class NetSpec:
    """One network of a profile, with the training budget every skip gate gets."""

    key: str  # "unet", "vnet", "tiramisu"
    options: dict[str, Any]
    seeds: int | None = None  # None: the profile's seeds
    skips: tuple[str, ...] | None = None  # None: the profile's skips


@dataclass(frozen=True)
class Profile:
    """Budgets and sizes of a benchmark run."""

    name: str
    datasets: dict[str, DatasetSpec]
    nets: dict[str, dict[str, NetSpec]]  # dataset -> net key -> spec
    train: dict[str, dict[str, Any]]  # dataset -> TrainConfig fields (epochs, iters_per_epoch, patch, batch, …)
    seeds: int
    threads: int | None  # torch intra-op threads (None: torch's default)
    device: str
    timing_repeats: int = 5
    tiramisu_skips: tuple[str, ...] = ("org", "sat")
    notes: list[str] = field(default_factory=list)
    skips: tuple[str, ...] | None = None  # default variants (None: Table 1's SKIPS)
    net_major: bool = False  # run order: every seed of a net before the next net (else seed-major)
    timing: bool = True  # plan the side-by-side timing sets
    require_clean: bool = False  # refuse to train from a working tree with uncommitted changes


_HIPPO = "msd_hippocampus"
_PH2 = "ph2_skin"

# U-Net and V-Net gate every skip, as the paper (satseg's default gates the finest only: variant `sat-fine1`).
_CPU_NETS = {
    "unet": NetSpec("unet", {"features": [8, 16, 32, 64], "gate_levels": "all"}),
    "vnet": NetSpec(
        "vnet", {"base_features": 8, "convs_per_stage": [1, 2, 2, 2], "kernel_size": 3, "gate_levels": "all"}
    ),
    "tiramisu": NetSpec("tiramisu", {"layers_per_block": [2, 2, 2, 2, 2], "growth_rate": 8, "first_features": 16}),
}
_GPU_NETS = {
    "unet": NetSpec("unet", {"gate_levels": "all"}),  # features 16-32-64-128-256
    "vnet": NetSpec("vnet", {"gate_levels": "all"}),  # base 16, convs (1, 2, 3, 3, 3), kernel 5, PReLU (Milletari)
    "tiramisu": NetSpec("tiramisu", {"preset": "fcdensenet56"}),
}

PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        datasets={
            "hippocampus": DatasetSpec("hippocampus", _HIPPO, 3),
            "ph2": DatasetSpec("ph2", _PH2, 2, size=(64, 64)),
        },
        nets={"hippocampus": _CPU_NETS, "ph2": _CPU_NETS},
        train={
            "hippocampus": {"epochs": 6, "iters_per_epoch": 25, "patch": (24, 32, 24), "batch": 2, "max_minutes": 4.0},
            "ph2": {"epochs": 8, "iters_per_epoch": 30, "patch": (64, 64), "batch": 8, "max_minutes": 4.0},
        },
        seeds=3,
        threads=1,
        device="cpu",
        timing_repeats=5,
        notes=[
            "Small widths and a short budget (150 steps on hippocampus, 240 on PH2), so the whole suite "
            "finishes on a shared 2-core CPU: absolute Dice is far below a converged model's; the comparison "
            "between skip gates at an equal budget is what this profile measures.",
            "One torch thread: on the shared 2-core machine two threads were about 10x slower per step "
            "(measured before the run) because the cores were oversubscribed by other jobs.",
        ],
    ),
    "gpu": Profile(
        name="gpu",
        datasets={
            "hippocampus": DatasetSpec("hippocampus", _HIPPO, 3),
            "ph2": DatasetSpec("ph2", _PH2, 2, size=(128, 128)),
        },
        nets={"hippocampus": _GPU_NETS, "ph2": _GPU_NETS},
        train={
            "hippocampus": {"epochs": 50, "iters_per_epoch": 100, "patch": (48, 64, 48), "batch": 4},
            "ph2": {"epochs": 50, "iters_per_epoch": 100, "patch": (128, 128), "batch": 12},
        },
        seeds=5,
        threads=None,
        device="cuda",
        timing_repeats=20,
        notes=["Paper-like widths (satseg defaults) and 5,000 steps per run."],
    ),
}

PROFILES["cpu-conv"] = replace(
    PROFILES["cpu"],
    name="cpu-conv",
    train={
        "hippocampus": {**PROFILES["cpu"].train["hippocampus"], "epochs": 120, "max_minutes": None},
        "ph2": {**PROFILES["cpu"].train["ph2"], "epochs": 80, "max_minutes": None},
    },
    seeds=3,
    notes=[
        "Convergence study on CPU: the `cpu` widths trained 3,000 steps on hippocampus and 2,400 on PH2 "
        "(20x and 10x the `cpu` budget), poly LR over the planned steps, no time budget. Each run is also "
        "scored at half its budget: the change from half to full budget shows whether Dice has levelled off.",
        *PROFILES["cpu"].notes[1:],
    ],
)

PROFILES["cpu-conv-long"] = replace(
    PROFILES["cpu-conv"],
    name="cpu-conv-long",
    train={ds: {**b, "epochs": 2 * b["epochs"]} for ds, b in PROFILES["cpu-conv"].train.items()},
    notes=[
        "The `cpu-conv` study at twice the budget (6,000 steps on hippocampus, 4,800 on PH2), same widths and "
        "schedule shape: checks whether the `cpu-conv` gaps are gaps at convergence or slower learning. "
        "Its half-budget score is `cpu-conv`'s budget under a slower-decaying learning rate. Its runs use "
        "satseg's training recipe as of its commit (U-Net deep supervision, continuous rotations), which the "
        "committed `cpu-conv` runs predate: compare variants within a profile, not absolute Dice across them.",
        *PROFILES["cpu"].notes[1:],
    ],
)

PROFILES["gpu-conv"] = replace(
    PROFILES["cpu-conv"],
    name="gpu-conv",
    seeds=5,
    device="cuda",
    notes=[
        "The `cpu-conv` study on one GPU with 5 seeds: the same widths, steps and data, so its figures extend "
        "the CPU ones. The nets are tiny for a GPU, so run many trainings at once: "
        "`python benchmarks/paper.py --profile gpu-conv --no-timing --only unet vnet --skips org sat … "
        "--parallel 12` (one torch CPU thread per process). Planned for about 10 minutes of an H100.",
    ],
)

PROFILES["cpu-long"] = replace(
    PROFILES["cpu"],
    name="cpu-long",
    train={ds: {**b, "epochs": 4 * b["epochs"], "max_minutes": 10.0} for ds, b in PROFILES["cpu"].train.items()},
    seeds=1,
    notes=[
        "A convergence check, not a full profile: four times the `cpu` budget (600 steps on hippocampus, "
        "960 on PH2) for a few ORG/SAT pairs with one seed, to see whether the gap of the `cpu` profile closes.",
        *PROFILES["cpu"].notes[1:],
    ],
)

FRONTIER_WIDTHS = (4, 6, 8, 12, 16)
"""Base widths of the `frontier` study's U-Nets (features w-2w-4w-8w)."""

FRONTIER_SKIPS = ("org", "sat", "sat-fine1", "sat-k2-bn-lin")
"""`frontier` variants: plain, the paper's gate on every skip, today's default (finest skip), the best light one."""


def frontier_nets(widths: tuple[int, ...] = FRONTIER_WIDTHS) -> dict[str, NetSpec]:
    """One U-Net per base width, keyed ``unet-w<width>``, every skip gated unless a variant says otherwise."""
    return {f"unet-w{w}": NetSpec("unet", {"features": [w, 2 * w, 4 * w, 8 * w], "gate_levels": "all"}) for w in widths}


FRONTIER_DEFAULT_NET = NetSpec(
    "unet", {"features": [16, 32, 64, 128, 256], "gate_levels": "all"}, skips=("org", "sat-fine1")
)
"""`build_model`'s default U-Net (16-256, 5 levels) plain and as shipped (finest skip gated): is the default on
the frontier? On PH2 only: hippocampus's 24 x 32 x 24 patch cannot be halved four times."""


PROFILES["frontier"] = replace(
    PROFILES["cpu-conv-long"],
    name="frontier",
    nets={"ph2": frontier_nets() | {"unet5-w16": FRONTIER_DEFAULT_NET}, "hippocampus": frontier_nets()},
    datasets={"ph2": PROFILES["cpu"].datasets["ph2"], "hippocampus": PROFILES["cpu"].datasets["hippocampus"]},
    train={"ph2": PROFILES["cpu-conv"].train["ph2"], "hippocampus": PROFILES["cpu-conv-long"].train["hippocampus"]},
    seeds=3,
    skips=FRONTIER_SKIPS,
    net_major=True,
    timing=False,
    require_clean=True,
    notes=[
        "Dice against inference memory (issue 23): U-Net at base widths 4, 6, 8, 12, 16 (doubling per level) x "
        "`org`, the paper's `sat` (every skip), the default (`sat-fine1`) and `sat-k2-bn-lin`, 3 seeds. Budget: "
        "`cpu-conv`'s 2,400 steps on PH2 (64 x 64, batch 8) and `cpu-conv-long`'s 6,000 on hippocampus (patch "
        "24 x 32 x 24, batch 2); each run is also scored at half its budget (the convergence check). Runs go "
        "width by width, narrowest first, so complete comparisons arrive first. Inference cost per architecture: "
        "`benchmarks/frontier.py --cost`. On PH2 also `build_model`'s default U-Net (16-256, 5 levels: width "
        "`16x5`), plain and with the default gate.",
        *PROFILES["cpu"].notes[1:],
    ],
)

PROFILES["frontier-2x"] = replace(
    PROFILES["frontier"],
    name="frontier-2x",
    nets={"hippocampus": frontier_nets()},
    datasets={"hippocampus": PROFILES["frontier"].datasets["hippocampus"]},
    train={
        "hippocampus": {
            **PROFILES["frontier"].train["hippocampus"],
            "epochs": 2 * PROFILES["frontier"].train["hippocampus"]["epochs"],
        }
    },
    notes=[
        "The `frontier` budget check on hippocampus, where `frontier`'s 6,000 steps left Dice rising by 0.02-0.05 "
        "from half to full budget: the same nets, variants, data and schedule shape at twice the steps (12,000; "
        "patch 24 x 32 x 24, batch 2). Compared seed by seed with `frontier` (`benchmarks/frontier.py "
        "--budget-check`): does Dice, and the gate's gap to `org`, move when the budget doubles?",
        *PROFILES["cpu"].notes[1:],
    ],
)

TABLE3_NETS = {
    "U-Net": ("unet3d", "unet2d", {"gate_levels": "all"}),
    "V-Net": ("vnet3d", "vnet2d", {"gate_levels": "all"}),
    "Tiramisu": ("tiramisu3d", "tiramisu2d", {"preset": "fcdensenet56"}),
    "DI2IN": ("di2in3d", "di2in2d", {}),
}
"""Table 3: net -> (3D model, 2D model, options), counted at satseg's paper-like default widths."""
