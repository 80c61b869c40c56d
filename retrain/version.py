"""The version of retrain, in one place.

A module of its own (not only `retrain/__init__.py`) so that it can be read
even when `retrain` resolves to something other than this package's
`__init__` (e.g. a folder named `retrain` in the working directory seen as a
namespace package) and by setup.cfg (`version = attr:`) without importing
anything else.
"""

__version__ = '0.1.0'
