"""Backend plug-ins: one module per array library, found through one registry.

`LIBRARIES` (defined in xpnn.backend, importable from here) is the registry: the library's name -> the module that implements its
backend, the Python package it needs, how to install that package, and the names device
strings start with ("cpu" and "numpy" for NumPy). `xpnn.backend` reads it to parse device
strings, make backends and find the backend of an array; it imports a module only when one of
its devices is asked for or one of its arrays is met, so a library that is not installed costs
nothing. NumPy and CuPy are plug-ins like the others.

A plug-in module defines:
    DEVICES                     the device strings it accepts, for messages
    HAS_CONTEXT                 whether its backend's `with` must be entered around its layers
    canonical(text) -> str      the canonical device string for `text` ("torch" ->
                                "torch:cpu"); ValueError for a device of its library it lacks
    make_backend(canonical) -> Backend    one instance per device (the registry keeps it);
                                ValueError or RuntimeError when the device is not there
    array_device(x) -> str | None         the canonical device of one of its arrays, else None
and may define
    which(canonical)            the second item of `parse_device` ("cuda:1" -> 1), else the
                                canonical string itself
    to_host(x) -> np.ndarray    an array's copy on the host without making a backend (CuPy)

Its Backend subclass (see xpnn.backend.Backend) gives the namespace, device, transfers,
generator, synchronize, memory and its accelerated-op table (`ops`, name -> implementation;
the names are those declared in xpnn.ops).

Adding a library: one module here, one line in `xpnn.backend.LIBRARIES`, and its tests (tests/test_libraries.py
runs the layers, models and training on every library it finds installed). See CONTRIBUTING.md.

What the libraries beyond NumPy and CuPy share: no accelerated ops (the portable Array-API
code runs; each library runs its own operations, multithreaded where it is), random numbers
from NumPy's PCG64 moved to the device (so a seeded model draws the same weights and dropout
masks on every library and its training matches NumPy's).
"""
from ..backend import LIBRARIES, Library  # noqa: F401 (the registry, read here as ever)
