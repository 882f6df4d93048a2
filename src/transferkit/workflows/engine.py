"""Where the runs of a sweep execute: in this process, or as Ray tasks on a machine or a cluster.

``compare``, ``rank``, ``tune`` and ``continual`` describe their work as a list of independent jobs
(one training run, one candidate, one tuning worker, one learner on one seed) and hand it to an
:class:`Engine`; ``engine.map(fn, jobs)`` returns ``[fn(*job) for job in jobs]`` in the order of
``jobs``, calling ``on_result(i, result)`` in this process as each finishes, which is where the
workflows journal a finished run. The local engine runs the jobs one after another here; the Ray
engine runs each as a Ray task with declared resources (one CPU, and one GPU where the cluster has
GPUs), so that two jobs never share a core. A job's arguments shared by several jobs (the data of
one seed) go to Ray's object store once.

Ray is imported only when the Ray engine starts; without it the error names the extra to install.

Example:
    >>> from transferkit.workflows.engine import make_engine
    >>> with make_engine("local") as engine:
    ...     engine.map(pow, [(2, 3), (3, 2)])
    [8, 9]
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transferkit.errors import ConfigError
from transferkit.export.ray_cluster import import_ray, init_ray

__all__ = ["ENGINES", "Engine", "LocalEngine", "RayEngine", "check_engine", "import_ray", "make_engine"]

ENGINES = ("local", "ray")


def check_engine(engine: str, address: str | None) -> None:
    """Refuse an unknown engine, or an address without the Ray engine, before any work.

    Raises:
        ConfigError: naming the option, the value and the valid choices.
    """
    if engine not in ENGINES:
        raise ConfigError(f"The 'engine' parameter (--engine) must be one of {', '.join(ENGINES)}. "
                          f"Got {engine!r} instead.")
    if address is not None and engine != "ray":
        raise ConfigError(f"address={address!r} (--address) names a Ray cluster; it needs engine='ray' (--engine ray).")
    if address is not None and address != "auto" and not _looks_like_address(address):
        raise ConfigError(f"The 'address' parameter (--address) must be 'auto', ray://HOST:PORT or HOST:PORT. "
                          f"Got {address!r} instead.")


def _looks_like_address(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return bool(host) and port.isdigit()


class Engine:
    """Runs independent jobs; :meth:`map` is the one call the workflows make."""

    name = "engine"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @property
    def workers(self) -> int:
        """How many jobs run at once."""
        return 1

    def map(self, fn: Callable, jobs: Sequence[tuple], on_result: Callable[[int, Any], None] | None = None) -> list:
        """``[fn(*job) for job in jobs]``, in order; ``on_result(i, result)`` runs here as each job finishes."""
        raise NotImplementedError


class LocalEngine(Engine):
    """The jobs one after another, in this process."""

    name = "local"

    def map(self, fn, jobs, on_result=None) -> list:
        results = []
        for i, job in enumerate(jobs):
            results.append(fn(*job))
            if on_result is not None:
                on_result(i, results[-1])
        return results


class RayEngine(Engine):
    """Each job a Ray task; Ray started here (or joined at ``address``) for the engine's lifetime.

    Args:
        address: ``None`` starts a local Ray (or uses the one this process already started);
            ``"auto"`` joins the cluster running on this machine (``ray start --head``);
            ``ray://HOST:PORT`` a remote cluster through Ray Client.
        num_cpus: CPUs each task declares.
        num_gpus: GPUs each task declares; default: 1 where the cluster has GPUs, else 0.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1, num_gpus: float | None = None):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self._started = False

    def __enter__(self) -> RayEngine:
        ray = import_ray()
        self._started = init_ray(self.address)
        if self.num_gpus is None:
            self.num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        return self

    def __exit__(self, *exc) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False

    @property
    def workers(self) -> int:
        """Tasks the cluster runs at once: its CPUs over each task's, and its GPUs over each task's where they use one."""
        resources = import_ray().cluster_resources()
        slots = resources.get("CPU", 1) // self.num_cpus
        if self.num_gpus:
            slots = min(slots, resources.get("GPU", 0) // self.num_gpus)
        return max(1, int(slots))

    def map(self, fn, jobs, on_result=None) -> list:
        ray = import_ray()
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(fn)
        shared: dict[int, Any] = {}
        keep = []  # the objects whose id() keys `shared`, alive until every job is submitted

        def put(arg):
            if isinstance(arg, (str, int, float, bool, type(None))):
                return arg
            if id(arg) not in shared:
                shared[id(arg)] = ray.put(arg)
                keep.append(arg)
            return shared[id(arg)]

        pending = {task.remote(*map(put, job)): i for i, job in enumerate(jobs)}
        results: list = [None] * len(jobs)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                results[i] = _get(ray, done[0])
                if on_result is not None:
                    on_result(i, results[i])
        finally:
            for ref in pending:  # an error or an interrupt here: the runs in flight stop
                ray.cancel(ref, force=True)
        return results


def _get(ray, ref):
    """The task's result; a task's own exception is raised as itself (a ConfigError stays a ConfigError)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def make_engine(engine: str | Engine | None = "local", address: str | None = None) -> Engine:
    """An engine from its name (``local``, ``ray``) and, for Ray, the cluster address; an Engine passes through."""
    if isinstance(engine, Engine):
        return engine
    engine = engine or "local"
    check_engine(engine, address)
    if engine == "ray":
        return RayEngine(address)
    return LocalEngine()

