"""torchrun entry point of the DeepSpeed test: ``phi3v-train run`` without DeepSpeed's optional shared-memory
all-reduce, whose C++ build takes minutes on a fresh CPU machine (gloo does the same job; results are identical)."""

import deepspeed.ops

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

from phi3v_train.cli.run import run  # noqa: E402 - after the patch, which must precede DeepSpeed's backend set-up

run()
