"""Running code in a fresh Python process, for what must start before JAX does (its CPU
device count)."""

import os
import subprocess
import sys


def fresh_python(code: str, *args: str, devices: int | None = None) -> str:
    """Runs ``code`` (argv: ``args``) in a fresh CPU-only Python, with XLA forced to
    ``devices`` CPU devices when given; returns its stdout. A failed run fails the test
    with the end of its stderr."""
    flags = os.environ.get("XLA_FLAGS", "")
    if devices:
        flags += f" --xla_force_host_platform_device_count={devices}"
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout
