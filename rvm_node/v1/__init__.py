"""The rvm_node.v1 protocol: what the node and its clients both depend on (neither on the other).

``matting_pb2*.py`` are generated from ``protos/rvm_node/v1/matting.proto`` when the package is built or
installed (see ``setup.py``) and are never edited or committed. ``protocol.py`` (frame parts, sample
formats, transports, state messages) and ``codec.py`` (the copy-free codec of chunk requests and plane
parts) are written by hand on top of them.
"""

DEFAULT_PORT = (
    50051  # a node's port when none is given, on either side (kept here: importing it costs nothing)
)
