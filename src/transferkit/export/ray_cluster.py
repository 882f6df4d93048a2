"""Starting or joining Ray for the Ray engine and Ray Serve: imported lazily, workers that run this transferkit.

Ray is imported only here, inside functions; importing transferkit never imports it. A local Ray's
workers get this process's ``PYTHONPATH`` (so they import this transferkit, not another install), its
offline settings and its feature cache folder; a remote cluster's get this package's code shipped
(Ray's ``py_modules``) and share the feature cache where ``TRANSFERKIT_CACHE`` names a folder every
node mounts.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from transferkit.errors import ConfigError

__all__ = ["check_reachable", "import_ray", "init_ray", "runtime_env"]

#: Environment variables a Ray worker needs to behave like this process (offline hubs, the feature cache).
FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "TRANSFERKIT_CACHE",
                 "TRANSFERKIT_LOG_DIR")


def import_ray():
    """The ``ray`` module, or a ConfigError naming the extra that brings it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("The Ray engine needs Ray: pip install 'transferkit[scale]'.") from None
    return ray


def runtime_env(address: str | None) -> dict:
    """Workers import this transferkit (not another install) and see this process's offline and cache settings."""
    from transferkit.data.cache import CACHE_ENV, default_cache_dir

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    package = Path(__file__).resolve().parents[1]
    if address is None or address == "auto":  # this machine: the workers read the same files
        env[CACHE_ENV] = str(default_cache_dir())
        env["PYTHONPATH"] = os.pathsep.join([str(package.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
        return {"env_vars": env}
    return {"env_vars": env, "py_modules": [str(package)]}


def check_reachable(address: str | None, timeout_s: float = 5) -> None:
    """A HOST:PORT that does not accept a connection is refused at once (Ray itself retries for minutes)."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"Cannot reach a Ray cluster at {address!r} (--address): {exc.strerror or exc}. Start one "
                          "with `ray start --head` there, or leave --address out to start a local Ray.") from None


def init_ray(address: str | None) -> bool:
    """Start a local Ray (``address=None``) or join the cluster at ``address``, unless this process has one already.

    Returns:
        Whether this call started or joined it (and so should shut it down).

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached (the message names ``--address``).
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_reachable(address)
    try:
        # "local": a new Ray even where `ray start` left a cluster running (that one is --address auto)
        ray.init(address=address or "local", runtime_env=runtime_env(address), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = f"at {address!r} (--address)" if address else "on this machine"
        raise ConfigError(f"Cannot start or reach a Ray cluster {where}: {str(exc).splitlines()[0]} "
                          "Start one with `ray start --head`, or leave --address out to start a local Ray.") from None
    return True
