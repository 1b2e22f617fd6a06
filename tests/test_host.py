"""`jaxnn.host.retain_freed_memory`: large freed blocks are reused without page faults."""

import os
import platform
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MB block, then does it again and prints the minor page
# faults of the second round: with glibc's defaults the block is a fresh mmap each time.
PROBE = """
import ctypes, resource, sys
from jaxnn import host
applied = host.retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, "GLIBC_TUNABLES": ""}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    _, default_faults = probe("default")
    if default_faults < pages // 2:  # e.g. transparent huge pages set to "always"
        pytest.skip(f"this kernel faults {default_faults} times for {pages} fresh pages")
    applied, retained_faults = probe("retain")
    assert applied == "True"
    assert retained_faults < pages // 20
