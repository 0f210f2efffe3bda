"""HTTP layer: routes, thin handlers over ``aioreg.registry``, and spec error bodies."""
