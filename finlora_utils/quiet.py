"""Silence the library messages the kit provokes but a user can do nothing about (imported by the package).

Each filter names one exact message, so every other warning still reaches the user:
- peft 0.21's ``PeftModel.__init__`` reads transformers' deprecated ``is_gradient_checkpointing`` alias (the kit
  itself reads ``is_activation_checkpointing``); transformers 5 answers every such read with a FutureWarning.
- bitsandbytes on CPUs with AVX-512-BF16 tries a Hugging Face hub kernel at import and logs a warning when the
  optional ``kernels`` package is absent; its built-in CPU kernel is what the kit uses anyway.
"""
from __future__ import annotations

import logging
import warnings

warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


class _DropHubKernelNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropHubKernelNote())
