"""Loopback helpers shared by the serving benchmarks (benchmarks/serve.py, benchmarks/serve_soak.py)."""
from __future__ import annotations

import base64
import io
import socket
import subprocess
import time

import numpy as np


def png_b64(image: np.ndarray) -> str:
    """``image`` (uint8) as a base64 PNG, the JSON form `/predict` takes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout_s: float = 120) -> None:
    """Poll ``url``/health until it answers 200; stop the server and raise if it exits or never answers."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.terminate()
    raise RuntimeError(f"server did not start within {timeout_s:.0f} s")
