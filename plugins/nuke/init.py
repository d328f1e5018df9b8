"""rvm-node for Nuke: non-UI setup (also runs under `nuke -t`).

Puts the bundled client wheels (site-packages/, built by build_site_packages.py)
on the path when they are there.
"""

import os

import nuke

_here = os.path.dirname(os.path.abspath(__file__))
_site = os.path.join(_here, "site-packages")
if os.path.isdir(_site):
    nuke.pluginAddPath(_site)
