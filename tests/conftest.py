"""Suite-wide settings.

The tests use tiny tensors, for which one thread is fastest; more threads only spin against each other
(and against other processes) on a small, shared CI machine.
"""

import torch

torch.set_num_threads(1)
