# -*- coding: utf-8 -*-
# Copyright: frelink developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""frelink_reclaim: free the space of deleted-but-held files by truncating them through a holder's descriptor."""
