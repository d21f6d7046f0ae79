"""The connection to a Ray cluster, for the stages that use one (`--executor ray`): the address given, else
`RAY_ADDRESS`, else a local Ray instance on 127.0.0.1 that `Cluster.close` stops. Ray is imported only here
and only when asked for; it is an optional extra (`pip install -e ".[ray]"`)."""

from __future__ import annotations

import os

from .errors import PseudoError
from .progress import Progress

INSTALL = 'pip install -e ".[ray]"'


def thread_env(cpus: int) -> dict:
    """A task's runtime environment: TensorFlow's thread pool sized to the CPUs Ray reserved for it."""
    return {"env_vars": {"TF_NUM_INTRAOP_THREADS": str(cpus), "TF_NUM_INTEROP_THREADS": "1",
                         "OMP_NUM_THREADS": str(cpus), "TF_CPP_MIN_LOG_LEVEL": "3", "TOKENIZERS_PARALLELISM": "false"}}


class Cluster:
    """`ray` connected; `close` disconnects what this object connected (a process that was connected
    before, e.g. a program embedding `pseudo`, keeps its connection)."""

    def __init__(self, address: str | None = None, progress: Progress | None = None, what: str = "executor ray"):
        try:
            import ray
        except ImportError:
            raise PseudoError(f"{what} needs Ray: {INSTALL}") from None
        self.ray, self.progress = ray, progress or Progress()
        address = address or os.environ.get("RAY_ADDRESS") or None
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # Ray forks after the tokenizer ran
        self.connected_here = not ray.is_initialized()
        options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            if not self.connected_here:
                self.progress.note(f"{what}: using the Ray connection this process already has")
            elif address:
                ray.init(address=address, **options)
            else:
                ray.init(address="local", _node_ip_address="127.0.0.1", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PseudoError(f"ray-address {address or 'local'}: cannot start or reach a Ray cluster "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.resources = ray.cluster_resources()

    def require(self, cpus: float, gpus: float, names: str) -> None:
        """Refuse a task shape the cluster cannot run (it would wait for ever)."""
        have_cpus, have_gpus = self.resources.get("CPU", 0), self.resources.get("GPU", 0)
        if have_cpus < cpus or have_gpus < gpus:
            self.close()
            raise PseudoError(f"{names}: the Ray cluster has {have_cpus:g} CPUs and {have_gpus:g} GPUs")

    def close(self) -> None:
        if self.connected_here and self.ray.is_initialized():
            self.ray.shutdown()
