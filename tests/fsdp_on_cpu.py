"""Run `posformer.training` under Accelerate's FSDP on CPU processes (gloo), for the tests.

Accelerate turns FSDP on only for GPU-like distributed types (`AcceleratorState`: MULTI_GPU, MULTI_XPU, ...), so
`accelerate launch --use_fsdp` on CPUs silently trains with plain data parallelism. PyTorch's FSDP2
(`fully_shard`) itself runs on CPU with gloo; this launcher sets the distributed type back to FSDP after
Accelerate's own checks, so the unchanged training script takes its FSDP code paths: sharded parameters,
`torch.distributed.checkpoint` states, gathered weights for evaluation and export.

    ACCELERATE_USE_CPU=true accelerate launch --num_processes 2 --use_fsdp --fsdp_version 2 \
        tests/fsdp_on_cpu.py <posformer-train arguments>
"""

import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

from posformer.training.train import main

_accelerate_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs) -> None:
    _accelerate_init(self, *args, **kwargs)
    # the state is re-initialised (without the plugin) by later `AcceleratorState()` calls: keep the plugin
    plugin = kwargs.get("fsdp_plugin") or getattr(self, "_fsdp_plugin_on_cpu", None)
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        # what AcceleratorState does for FSDP on GPUs
        self.distributed_type = DistributedType.FSDP
        if self._mixed_precision != "no" and kwargs.get("fsdp_plugin") is not None:
            plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = self._fsdp_plugin_on_cpu = plugin


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    main(sys.argv[1:])
