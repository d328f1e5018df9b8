"""The rvm-node Nuke plugin: matte selected Reads on render nodes and wire the mattes back.

Everything that does not need Nuke lives in ``rvm_node`` (client, farm,
writers); this package only reads the node graph and writes it back.
Nuke 15 runs Python 3.10: keep this package free of 3.11-only syntax.
"""
