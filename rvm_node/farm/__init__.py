"""Many shots over a pool of render nodes, with failover and restart."""

from rvm_node.farm.pool import NodePool, parse_nodes
from rvm_node.farm.runner import FarmEvent, ShotResult, run_shots
from rvm_node.farm.shots import (
    DEFAULT_PREROLL,
    Shot,
    load_shot_list,
    make_shots,
    shots_from_entries,
    split_shot,
)

__all__ = [
    "DEFAULT_PREROLL",
    "FarmEvent",
    "NodePool",
    "Shot",
    "ShotResult",
    "load_shot_list",
    "make_shots",
    "parse_nodes",
    "run_shots",
    "shots_from_entries",
    "split_shot",
]
