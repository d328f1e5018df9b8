"""RVM Matte: matte movie clips and Sequencer strips on rvm-node render nodes.

Installed as a Blender 4.2+ extension, Blender installs the bundled wheels
(the rvm-node client and what it needs). Installed the legacy way, as a
folder under ``scripts/addons``, the folder's own ``site-packages`` (made by
``build.py --legacy``) is put on ``sys.path`` when the add-on is enabled.
"""

from __future__ import annotations

import os
import sys

bl_info = {
    "name": "RVM Matte",
    "author": "rvm-node developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Clip Editor and Sequencer > Sidebar > RVM",
    "description": "Matte clips and strips on rvm-node render nodes and load the mattes back",
    "category": "Compositing",
}

_SITE_PACKAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site-packages")


def _classes() -> list[type]:
    from .operators import RVM_OT_matte_clip, RVM_OT_matte_strip
    from .panels import RVM_PT_clip, RVM_PT_sequencer
    from .preferences import RVM_OT_test_connection, RvmPreferences

    return [
        RvmPreferences,
        RVM_OT_test_connection,
        RVM_OT_matte_clip,
        RVM_OT_matte_strip,
        RVM_PT_clip,
        RVM_PT_sequencer,
    ]


def register() -> None:
    import bpy

    if os.path.isdir(_SITE_PACKAGES) and _SITE_PACKAGES not in sys.path:
        sys.path.append(_SITE_PACKAGES)
    for cls in _classes():
        bpy.utils.register_class(cls)


def unregister() -> None:
    import bpy

    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
    if _SITE_PACKAGES in sys.path:
        sys.path.remove(_SITE_PACKAGES)
