"""rvm-node for Nuke: the RVM menu."""

import nuke
from rvm_nuke import job, panel

_menu = nuke.menu("Nuke").addMenu("RVM")
_menu.addCommand("Matte selected", job.matte_selected)
_menu.addCommand("Settings...", panel.show_settings)
_menu.addCommand("Test connection", job.test_connection)
