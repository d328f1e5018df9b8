"""Many shots over a pool of render nodes, with failover and restart."""

from rvm_node.farm.pool import NodePool, parse_nodes
from rvm_node.farm.runner import FarmEvent, ShotResult, run_shots
from rvm_node.farm.shots import Shot, load_shot_list, make_shots

__all__ = [
    "FarmEvent",
    "NodePool",
    "Shot",
    "ShotResult",
    "load_shot_list",
    "make_shots",
    "parse_nodes",
    "run_shots",
]
