"""Backend plug-ins: one module per array library beyond NumPy and CuPy.

Each module implements the Backend interface of `xpnn.backend` for its library (namespace,
device, transfers, generator, synchronize, memory, accelerated-op table) and the four names
the registry asks of it (`xpnn.backend.PLUGINS` lists them): `DEVICES`, `canonical(text)`,
`make_backend(device)` and `array_device(x)`. The registry imports a module only when one of
its devices is asked for or one of its arrays is met, so a library that is not installed costs
nothing. Adding a library: one module here, one line in `PLUGINS`, and its tests.

What they share: no accelerated ops (the portable Array-API code runs; each library runs its
own operations, multithreaded where it is), random numbers from NumPy's PCG64 moved to the
device (so a seeded model draws the same weights and dropout masks on every library and its
training matches NumPy's), and no writes into arrays (`writes_in_place = False`).
"""
