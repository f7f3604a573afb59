# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""frelink's private module_utils: not an API; they change with the modules that use them.
Shared here; scan/ builds the facts, restore/ acts on them."""
