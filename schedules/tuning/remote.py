"""Measurement on RPC devices: build candidates here, time them on every device a ``tvm.rpc`` tracker lists.

``lowbit tune --rpc HOST:PORT --key KEY``. Each device is an RPC server registered with the tracker under
``KEY`` (``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` on the device); the runner holds
one session per device for the whole run. A batch of candidates is built here (for ``--target``: the
devices must have its features), shared out round-robin, and each device times its share in parallel.

Timing is cold, as elsewhere in lowbit, but by TVM's own means on the device: ``time_evaluator`` with
``f_preproc="cache_flush_cpu_non_first_arg"`` flushes the weights (every argument but X) from the CPU caches
before each timed call, so no weight copies travel over the network. The result is checked against the
reference before it is timed.
"""
import concurrent.futures
import os
import tempfile

import numpy as np

from lowbit.errors import InputError, TargetError
from lowbit.runtime import timing
from lowbit.schedules.tuning import tuner

CACHE_FLUSH = "cache_flush_cpu_non_first_arg"  # TVM's time_evaluator pre-processor (src/runtime/rpc)


def parse_address(text):
    """``"HOST:PORT"`` -> (host, port); InputError with the fix otherwise."""
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--rpc {text!r} is not HOST:PORT of an RPC tracker: use e.g. --rpc 127.0.0.1:9190")
    return host, int(port)


class RPCRunner:
    """Times candidates on the devices registered under ``key`` with the tracker at ``address``.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` of the tracker.
    key : str
        The devices' key.
    repeat : int
        Timed calls per candidate (the fastest kept).
    """

    def __init__(self, address, key, repeat=tuner.DEFAULT_REPEAT):
        from tvm import rpc

        host, port = parse_address(address)
        try:
            self._client = rpc.connect_tracker(host, port)
            servers = self._client.summary()["server_info"]
        except (OSError, RuntimeError) as err:
            raise TargetError(f"no RPC tracker answers at {host}:{port} ({err}): start one with `python -m "
                              "tvm.exec.rpc_tracker --host HOST --port PORT`") from err
        devices = sum(1 for server in servers if server["key"].split(":", 1)[-1] == key)
        if not devices:
            raise TargetError(f"the tracker at {host}:{port} has no device under key {key!r}: start one with "
                              f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")
        self.repeat = repeat
        self.sessions = [self._client.request(key, priority=1) for _ in range(devices)]
        self.measured = [0] * devices  # candidates each device timed
        self._builders, self._inputs = {}, {}
        self._uploads = 0  # every upload gets a new file name: overwriting a loaded library crashes the server

    @property
    def parallel(self):
        """Candidates timed at once (one per device): the tuner measures batches at least this large."""
        return len(self.sessions)

    def measure(self, job, pairs):
        """``[(ms, error)]`` for the ``(rule, config)`` pairs of ``job``, in order."""
        builder = self._builder(job)
        results = [None] * len(pairs)
        with tempfile.TemporaryDirectory(prefix="lowbit-rpc-") as folder:
            built = []
            for index, (rule, config) in enumerate(pairs):
                try:
                    self._uploads += 1
                    path = os.path.join(folder, f"lowbit_candidate{self._uploads}.so")
                    builder.build(rule, config).library.export_library(path)
                    built.append((index, path))
                except Exception as err:  # noqa: BLE001 - a candidate that fails to build is recorded as failed
                    results[index] = (None, timing.failure_reason(err))
            shares = [built[device::len(self.sessions)] for device in range(len(self.sessions))]
            with concurrent.futures.ThreadPoolExecutor(len(self.sessions)) as pool:
                timed = pool.map(lambda device: self._time_share(device, job, builder, shares[device]),
                                 range(len(self.sessions)))
                for share in timed:
                    for index, outcome in share:
                        results[index] = outcome
        return results

    def _builder(self, job):
        if id(job) not in self._builders:
            self._builders = {id(job): tuner.CandidateBuilder(job.weight(), job.M, job.kernel, job.target)}
            self._inputs = {}
        return self._builders[id(job)]

    def _time_share(self, device, job, builder, share):
        return [(index, self._time_one(device, job, builder, path)) for index, path in share]

    def _time_one(self, device, job, builder, path):
        session = self.sessions[device]
        try:
            session.upload(path)
            library = session.load_module(os.path.basename(path))
            x, weights, y = self._device_inputs(device, job, builder)
            library["mpgemm"](x, *weights, y)
            timing.check_close(os.path.basename(path), y.numpy(), builder.reference, builder.bound)
            evaluator = library.time_evaluator("mpgemm", session.cpu(), number=1, repeat=self.repeat,
                                               f_preproc=CACHE_FLUSH)
            ms = min(evaluator(x, *weights, y).results) * 1e3  # as timing.tuning_ms: the fastest
            self.measured[device] += 1
            return ms, None
        except Exception as err:  # noqa: BLE001 - a candidate that fails on the device is recorded as failed
            return None, timing.failure_reason(err)

    def _device_inputs(self, device, job, builder):
        """X, the weight arrays and Y on the device, sent once per workload."""
        if device not in self._inputs:
            from lowbit.compiler.tvm_api import tensor

            dev = self.sessions[device].cpu()
            self._inputs[device] = (tensor(builder.x, dev), [tensor(a, dev) for a in builder.arrays.values()],
                                    tensor(np.zeros(builder.reference.shape, np.float32), dev))
        return self._inputs[device]

    def close(self):
        """Give the devices back to the tracker."""
        self.sessions, self._inputs, self._builders = [], {}, {}
        self._client.close()
