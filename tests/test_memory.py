"""retain_cpu_memory: the glibc settings take effect where glibc is the C library."""

from __future__ import annotations

import platform
import sys

import pytest

from cifar_lightning.memory import retain_freed_memory


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt's thresholds are glibc's",
)
def test_retain_freed_memory_takes_effect_on_glibc():
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True  # once per process; asking again is harmless
