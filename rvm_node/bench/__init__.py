"""``rvm-node bench``: the benchmarks, one module each; they live apart from the tests.

engine    tensor throughput of our backends against the official ONNX, side by side (:mod:`.engine`)
convert   the converter end to end against the tensor rate (:mod:`.convert`)
node      the node's serving path against a bare gRPC echo, a simulated device, real inference (:mod:`.node`)
farm      nodes pinned to one core: 1 against 2 nodes, and a failover (:mod:`.farm`)

Every ratio is measured side by side in one run; noisy configurations are interleaved and reported as
medians. Stand-ins that isolate a cost are in :mod:`.standins`, named as such in the output.
"""

from __future__ import annotations

from rvm_node.bench.convert import run_convert_bench
from rvm_node.bench.engine import run_engine_bench
from rvm_node.bench.farm import run_farm_bench
from rvm_node.bench.node import run_node_bench

__all__ = ["run_convert_bench", "run_engine_bench", "run_farm_bench", "run_node_bench"]
