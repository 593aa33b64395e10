"""`import xpnn.cs231n.shim` at the top of an assignment notebook makes `cs231n` xpnn's
(see xpnn.cs231n.install)."""
from . import install

install()
