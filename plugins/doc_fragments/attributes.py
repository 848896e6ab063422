# Copyright: onebox.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What check mode and diff mode mean for every module of the collection.
A module takes onebox.platform.attributes.check_diff (both supported) or
onebox.platform.attributes.check_only (check mode; nothing to diff),
onebox.platform.attributes.info (a read: the same in check mode), or the
plain fragment with an attributes block of its own (partial support)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Runs in check mode, reporting what it would change without changing anything.
  diff_mode:
    description: In diff mode, shows what changed (or, in check mode, what would change).
"""

    CHECK_DIFF = r"""
options: {}
attributes:
  check_mode:
    description: Runs in check mode, reporting what it would change without changing anything.
    support: full
  diff_mode:
    description: In diff mode, shows what changed (or, in check mode, what would change).
    support: full
"""

    CHECK_ONLY = r"""
options: {}
attributes:
  check_mode:
    description: Runs in check mode, reporting what it would change without changing anything.
    support: full
  diff_mode:
    description: In diff mode, shows what changed (or, in check mode, what would change).
    support: none
"""

    INFO = r"""
options: {}
attributes:
  check_mode:
    description: Reads only, so it runs the same in check mode.
    support: full
  diff_mode:
    description: Reads only; there is nothing to diff.
    support: none
"""
