"""Generated protocol code for ``rvm_node.v1`` (from ``protos/rvm_node/v1/matting.proto``).

``matting_pb2*.py`` are generated when the package is built or installed
(see ``setup.py``) and are never edited or committed.
"""
