"""A ``torchrun`` worker for ``test_train.py``: a tiny 2D training whose validation sleeps per case, so that
validating every case on one rank would outlast the process group's timeout (``$SATSEG_DIST_TIMEOUT``).

Usage: ``torchrun --nproc_per_node 2 ddp_slow_validation.py DATA OUT SECONDS_PER_CASE``.
"""

import sys
import time
from pathlib import Path

from satseg.training import loop, trainer
from satseg.training.config import TrainConfig

data, out, per_case = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
real = loop.validate_cases


def slow_validation(model, cases, *args, **kwargs):
    time.sleep(per_case * len(cases))  # sleeping needs no CPU: the timing holds on a loaded machine
    return real(model, cases, *args, **kwargs)


loop.validate_cases = slow_validation
config = TrainConfig(net="unet2d", skip="sat", epochs=1, iters_per_epoch=2, batch=2, patch=(16, 16), optimizer="adam",
                     device="cpu", augment=False, model_options={"features": [4, 8]})  # fmt: skip
result = trainer.train(data, out, config, progress=False)
if result.is_main:
    print(f"val_dice {result.final_dice}")
