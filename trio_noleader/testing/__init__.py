"""Tools to test election churn: fault injection, a fenced resource, simulation.

Public API for users who want to property-test their own leader-only code in
virtual time. See README.rst, "Testing your leader code".
"""

from __future__ import annotations

from ._faults import Call as Call
from ._faults import FaultyBackend as FaultyBackend

for _obj in (Call, FaultyBackend):
    _obj.__module__ = __name__
del _obj
